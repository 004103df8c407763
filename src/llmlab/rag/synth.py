"""Synthetic questions from a corpus, by the local chat model: labels for adapting and evaluating
retrieval when nobody has written any (InPars, Bonifacio et al. 2022; GPL, Wang et al. 2022).

For each chunk the model reads a window of it and writes one question it answers. Two tricks get
usable questions out of a 135M model:

- A forced opening ("How do I", "What happens when", ...): the reply starts with the question
  words, so the model continues a question instead of summarising the passage, and the openings
  rotate, so the set is not all "What is the purpose of X?".
- Round-trip filtering (Alberti et al. 2019): keep a question only if first-stage retrieval over
  the whole corpus ranks its own chunk within `keep_rank`. A question that does not lead back to
  its passage is too vague, or about something else, and would teach the encoder noise.

The output is JSONL, appended one batch at a time, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from llmlab.core.progress import progress

OPENINGS = ("How do I", "What happens when", "Why does", "How can I", "What is the difference between",
            "When should I", "Is it possible to", "What does")
PROMPT = ("Passage:\n{passage}\n\nWrite one question {audience} might ask that this passage answers. "
          "Use everyday words, not the passage's exact terms.")
AUDIENCE = "a reader of these documents"


def passage_window(text: str, max_words: int, rng: random.Random) -> str:
    """A window of at most `max_words` words of the chunk (a random one for long chunks), so
    prompts stay short and different questions come from different parts of big chunks."""
    words = text.split()
    if len(words) <= max_words:
        return " ".join(words)
    start = rng.randrange(0, len(words) - max_words + 1)
    return " ".join(words[start:start + max_words])


def clean_question(opening: str, continuation: str) -> str | None:
    """The question text, or None when the continuation is unusable (empty, a loop, meta-talk)."""
    text = " ".join((opening + continuation).split())
    text = text.split("?")[0].strip()
    words = text.split()
    if len(words) < 5 or len(words) > 30 or "passage" in text.lower():
        return None
    if len(set(words)) < 0.6 * len(words):  # "Python: Python: Python: ..."
        return None
    return text + "?"


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file, ignoring a torn last line (a run killed mid-write)."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def synthesize_questions(engine, chunks: list[dict], out_path: str | Path, max_words: int = 70,
                         max_new_tokens: int = 28, batch_size: int = 32, seed: int = 0,
                         audience: str = AUDIENCE, show_progress: bool = True) -> list[dict]:
    """One question per chunk ({"id", "source", "text"} dicts), appended to `out_path` as
    {"chunk_id", "source", "question", "passage"} lines; chunks already in the file are skipped.
    `audience` names who asks ("a Python programmer"): the model writes in that reader's words."""
    from llmlab.infer.sampling import SamplingConfig

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = {row["chunk_id"] for row in read_jsonl(out_path)}
    todo = [c for c in chunks if c["id"] not in done]
    rng = random.Random(seed)
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop=["?", "\n"])
    bar = progress(total=len(chunks), desc="questions", unit="chunk", disable=None if show_progress else True)
    bar.update(len(chunks) - len(todo))
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        prompts, openings = [], []
        for c in batch:
            opening = OPENINGS[c["id"] % len(OPENINGS)]
            messages = [{"role": "user", "content": PROMPT.format(audience=audience, passage=passage_window(c["text"], max_words, rng))}]
            prompts.append(engine.encode_prompt(messages) + engine.tokenizer.encode(opening))
            openings.append(opening)
        outs = engine.generate_batch(prompts, config)
        with out_path.open("a", encoding="utf-8") as f:  # whole lines per batch: resumable
            for c, opening, out in zip(batch, openings, outs):
                q = clean_question(opening, out.text)
                f.write(json.dumps({"chunk_id": c["id"], "source": c["source"], "question": q,
                                    "passage": c["text"]}) + "\n")
        bar.update(len(batch))
    bar.close()
    return [r for r in read_jsonl(out_path) if r.get("question")]


def round_trip_filter(retriever, rows: list[dict], keep_rank: int = 10, show_progress: bool = True) -> list[dict]:
    """Rows whose question retrieves its own chunk in the top `keep_rank` (hybrid search); each
    kept row gets "rank" (1 = first)."""
    kept = []
    bar = progress(total=len(rows), desc="round-trip", unit="q", disable=None if show_progress else True)
    for row in rows:
        hits = retriever.search(row["question"], keep_rank, "hybrid")
        ids = [h["id"] for h in hits]
        if row["chunk_id"] in ids:
            kept.append(dict(row, rank=ids.index(row["chunk_id"]) + 1))
        bar.update(1)
    bar.close()
    return kept


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“(])")


def sentences(text: str) -> list[str]:
    """Prose sentences of a passage (code and grammar lines are not answers)."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        if para.startswith("   ") or "::=" in para:
            continue
        for s in _SENTENCE.split(" ".join(para.split())):
            if 6 <= len(s.split()) <= 60:
                out.append(s)
    return out
