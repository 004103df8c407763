"""Synthetic grounded-QA examples: teach the answerer to answer from passages, cite, or abstain.

From each synthetic question (llmlab.rag.synth, with its source chunk and the window of it the
question was written from) we make one chat example in exactly the prompt format the assistant
uses at answer time: `k` passages, each cut from its parent section by prompt.answer_passage as
at answer time, then the question (prompt.grounded_messages).

- answerable (most): the question's own chunk among the retrieved passages, at a random number,
  cut around the span the question came from; the target is that span's sentence closest to the
  question (MiniLM similarity), then [n]. A quoted sentence is an answer the passage certainly
  supports, which is what citation precision asks for, and quoting is within a 135M model's
  reach where free paraphrase is not. Choosing it from the question's own span matters: the
  first version chose from the chunk's opening, and its answerer learned to quote openings.
- unanswerable (`abstain_fraction`): the retrieved passages with the question's own document
  removed, so they are on a near topic but do not hold the answer; the target is the fixed
  abstention sentence. Hard negatives, not random ones: otherwise "abstain when the passages
  look unrelated" would be enough, and that is not the case that matters.

"Another document" is not enough on its own: Python's docs repeat whole sections under several
topics (`specialnames` holds `attribute-access` word for word), so a passage sharing any run of
eight words with the question's chunk is never used as a distractor or a negative. Otherwise an
abstention example would show the answer and teach the answerer to refuse with it in front of it.
"""

from __future__ import annotations

import random

import numpy as np

from llmlab.assistant.prompt import ABSTAIN, Source, answer_passage, grounded_messages
from llmlab.core.progress import progress
from llmlab.data.curation.minhash import shingle_hashes
from llmlab.rag.evaluate import normalise_ws
from llmlab.rag.synth import sentences


def answer_target(question: str, passage: str, span: str, embedder) -> str | None:
    """The sentence of `span` (the text the question was written from) that the shown `passage`
    holds and that is closest to the question; None when the passage shows none of it."""
    shown = normalise_ws(passage)
    inside = [s for s in sentences(span) if normalise_ws(s) in shown]
    if not inside:
        return None
    qv, sv = embedder.embed([question]), embedder.embed(inside)
    return inside[int(np.argmax(sv @ qv[0]))]


def grounded_examples(retriever, embedder, rows: list[dict], k: int = 4, abstain_fraction: float = 0.1,
                      parent: bool = True, passage_words: int = 100, seed: int = 0,
                      show_progress: bool = True) -> list[dict]:
    """Chat examples {"messages": [...], "kind": "answer"|"abstain", "chunk_id"} from round-trip rows
    ({"chunk_id", "question", "passage"}); `parent` and `passage_words` as in AssistantConfig."""
    rng = random.Random(seed)
    by_id = {c["id"]: c for c in retriever.chunks}
    examples = []
    bar = progress(total=len(rows), desc="grounded QA", unit="q", disable=None if show_progress else True)
    for row in rows:
        bar.update(1)
        own = by_id.get(row["chunk_id"])
        if own is None:
            continue
        hits = retriever.search(row["question"], 3 * k + 2, "hybrid")
        own_text = shingle_hashes(answer_passage(own, parent, 0), 8)   # the whole parent: what any cut shows
        others = [h for h in hits if h["source"] != own["source"]
                  and not np.intersect1d(own_text, shingle_hashes(h["text"], 8)).size]
        abstain = rng.random() < abstain_fraction
        if abstain:
            passages = [answer_passage(h, parent, passage_words) for h in others[:k]]
            chosen, target = others[:k], ABSTAIN
        else:
            text = answer_passage(own, parent, passage_words, anchor=row.get("passage"))
            best = answer_target(row["question"], text, row.get("passage") or own["text"], embedder)
            if best is None:
                continue
            chosen = others[:k - 1]
            passages = [answer_passage(h, parent, passage_words) for h in chosen]
            slot = rng.randrange(len(passages) + 1)
            passages.insert(slot, text)
            chosen.insert(slot, own)
            target = f"{best} [{slot + 1}]"
        if len(passages) < 2:
            continue
        sources = [Source(i, h["source"], h.get("section", ""), h["title"], text, h["start"], h["end"], 0.0)
                   for i, (h, text) in enumerate(zip(chosen, passages), start=1)]
        messages = grounded_messages(row["question"], sources) + [{"role": "assistant", "content": target}]
        examples.append({"messages": messages, "kind": "abstain" if abstain else "answer",
                         "chunk_id": row["chunk_id"]})
    bar.close()
    return examples
