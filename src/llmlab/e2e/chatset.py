"""The built-in instruction set: chat examples made from the curated (training) corpus, seeded.

Four kinds, each a question whose answer is in the corpus itself, so a model pretrained on that
corpus has the knowledge and SFT only teaches it the format (question in, short answer, stop):

    continue   "Continue this passage from Hamlet:\\n<2-4 lines>"   -> the next two lines
    play       "Which play is this line from?\\n<a line>"            -> "Hamlet"
    function   "What does the Python function `json.dumps` do?"     -> its docstring's first sentence
               (functions and methods found with `ast` in the standard-library source)
    topic      "Explain the Python topic 'assert'."                 -> the topic's first paragraph

Only curated training documents are used: the held-out split (llmlab.e2e.corpus) never reaches
this module, so no chat example contains in-domain evaluation text. The same corpus, size, kinds
and seed give the same examples in the same order on every machine. Examples are unique by
prompt, so the validation split shares no prompt with the training split.
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Iterator

KINDS = ("continue", "play", "function", "topic")
SOURCES = ("shakespeare:", "python:", "pydocs:")   # the corpus documents the kinds draw from
SYSTEM = ""   # no system prompt: the template then starts with the user turn
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
_WORDS = re.compile(r"\S+")


def _verse_lines(text: str) -> list[str]:
    """A play's spoken lines (speaker labels "HAMLET:" and blank lines left out)."""
    return [line for line in text.split("\n") if len(_WORDS.findall(line)) >= 4 and not line.endswith(":")]


def _title(source: str) -> str:
    return source.split(":", 1)[1] if ":" in source else source


def first_sentence(docstring: str, max_chars: int = 240) -> str | None:
    """The docstring's summary: its first paragraph's first sentence, one line, or None if unusable."""
    paragraph = docstring.strip().split("\n\n")[0]
    text = " ".join(paragraph.split())
    if not text:
        return None
    sentence = _SENTENCE_END.split(text, maxsplit=1)[0]
    if len(_WORDS.findall(sentence)) < 3 or len(sentence) > max_chars:
        return None
    return sentence if sentence.endswith((".", "!", "?")) else sentence + "."


def module_name(source: str) -> str:
    """"python:json/decoder.py" -> "json.decoder"; "python:json/__init__.py" -> "json"."""
    rel = _title(source)
    parts = rel[:-3].split("/") if rel.endswith(".py") else rel.split("/")
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def functions(text: str, module: str) -> Iterator[tuple[str, str]]:
    """(qualified name, first sentence of its docstring) for the public functions and methods."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            members = [(node.name, node)]
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            members = [(f"{node.name}.{m.name}", m) for m in node.body
                       if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
        else:
            continue
        for name, fn in members:
            if name.split(".")[-1].startswith("_"):
                continue
            summary = first_sentence(ast.get_docstring(fn) or "")
            if summary:
                yield f"{module}.{name}" if module else name, summary


def first_paragraph(text: str, max_words: int = 80) -> str | None:
    """A docs topic's first prose paragraph (after its title and underline), at most `max_words`."""
    for paragraph in text.split("\n\n"):
        lines = [ln for ln in paragraph.split("\n") if ln.strip() and not set(ln.strip()) <= set("*=-~^")]
        words = " ".join(lines).split()
        if len(words) >= 8:
            if len(words) > max_words:
                cut = " ".join(words[:max_words])
                sentence_end = max(cut.rfind(". "), cut.rfind(".\n"))
                return cut[:sentence_end + 1] if sentence_end > 40 else cut + " ..."
            return " ".join(words)
    return None


def _example(kind: str, prompt: str, answer: str, source: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            "kind": kind, "source": source}


class _Pools:
    """What each kind draws from, gathered once from the corpus documents."""

    def __init__(self, docs: list[dict]):
        self.plays: list[tuple[str, list[str]]] = []        # (title, verse lines of one scene)
        self.functions: list[tuple[str, str, str]] = []     # (name, summary, source)
        self.topics: list[tuple[str, str, str]] = []        # (topic, paragraph, source)
        seen_functions: set[str] = set()
        for doc in docs:
            source = doc.get("source", "")
            if source.startswith("shakespeare:"):
                lines = _verse_lines(doc["text"])
                if len(lines) >= 6:
                    self.plays.append((_title(source), lines))
            elif source.startswith("python:"):
                for name, summary in functions(doc["text"], module_name(source)):
                    if name not in seen_functions:
                        seen_functions.add(name)
                        self.functions.append((name, summary, source))
            elif source.startswith("pydocs:"):
                paragraph = first_paragraph(doc["text"])
                if paragraph:
                    self.topics.append((_title(source), paragraph, source))

    def size(self, kind: str) -> int:
        """Distinct examples a kind can make (continue/play: effectively unbounded)."""
        if kind in ("continue", "play"):
            return 10**9 if self.plays else 0
        return len(self.functions if kind == "function" else self.topics)

    def draw(self, kind: str, rng: random.Random, index: int) -> dict:
        if kind == "continue":
            title, lines = rng.choice(self.plays)
            n = rng.randint(2, 4)
            start = rng.randrange(0, len(lines) - n - 2 + 1)
            passage, following = lines[start:start + n], lines[start + n:start + n + 2]
            return _example(kind, f"Continue this passage from {title}:\n" + "\n".join(passage), "\n".join(following),
                            f"shakespeare:{title}")
        if kind == "play":
            title, lines = rng.choice(self.plays)
            return _example(kind, f"Which play is this line from?\n{rng.choice(lines)}", title, f"shakespeare:{title}")
        if kind == "function":
            name, summary, source = self.functions[index]
            return _example(kind, f"What does the Python function `{name}` do?", summary, source)
        topic, paragraph, source = self.topics[index]
        return _example(kind, f"Explain the Python topic '{topic}'.", paragraph, source)


def build_chat_set(docs: list[dict], size: int, kinds: list[str], seed: int = 0) -> list[dict]:
    """`size` unique chat examples ({"messages", "kind", "source"}) over `kinds`, as evenly as the
    corpus allows: a kind that runs out (few functions or topics) leaves its share to the others."""
    pools = _Pools(docs)
    rng = random.Random(seed)
    usable = [k for k in kinds if pools.size(k) > 0]
    if not usable:
        return []
    quota = {k: 0 for k in usable}
    remaining, open_kinds = size, list(usable)
    while remaining > 0 and open_kinds:   # even shares, capped by what each kind can make
        share = max(1, remaining // len(open_kinds))
        for k in list(open_kinds):
            take = min(share, pools.size(k) - quota[k], remaining)
            quota[k] += take
            remaining -= take
            if quota[k] >= pools.size(k):
                open_kinds.remove(k)
            if remaining == 0:
                break
    examples: list[dict] = []
    seen: set[str] = set()
    for kind in usable:
        order = list(range(pools.size(kind))) if kind in ("function", "topic") else []
        rng.shuffle(order)
        made, attempts = 0, 0
        while made < quota[kind] and attempts < quota[kind] * 20:
            attempts += 1
            example = pools.draw(kind, rng, order[made] if order else 0)
            prompt = example["messages"][0]["content"]
            if prompt in seen:
                continue
            seen.add(prompt)
            examples.append(example)
            made += 1
    rng.shuffle(examples)
    return examples


def split_chat_set(examples: list[dict], val_fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, val): a seeded `val_fraction` of the examples (at least one) for validation."""
    order = list(range(len(examples)))
    random.Random(seed + 1).shuffle(order)
    n_val = max(1, round(len(examples) * val_fraction)) if len(examples) > 1 else 0
    val = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in val], [e for i, e in enumerate(examples) if i in val]


def kind_counts(examples: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in examples:
        counts[e["kind"]] = counts.get(e["kind"], 0) + 1
    return dict(sorted(counts.items()))
