"""Synthetic grounded-QA examples: teach the answerer to answer from passages, cite, or abstain.

From each synthetic question (llmlab.rag.synth, with its source chunk) we make one chat example
in exactly the prompt format the assistant uses at answer time (prompt.grounded_messages):

- answerable (most): the question's own chunk among `k` retrieved passages, at a random number;
  the target is the chunk's sentence closest to the question (MiniLM similarity), then [n]. A
  quoted sentence is an answer the passage certainly supports, which is what citation precision
  asks for, and quoting is within a 135M model's reach where free paraphrase is not.
- unanswerable (`abstain_fraction`): the retrieved passages with the question's own document
  removed, so they are on a near topic but do not hold the answer; the target is the fixed
  abstention sentence. Hard negatives, not random ones: otherwise "abstain when the passages
  look unrelated" would be enough, and that is not the case that matters.
"""

from __future__ import annotations

import random

import numpy as np

from llmlab.assistant.prompt import ABSTAIN, Source, grounded_messages
from llmlab.core.progress import progress
from llmlab.rag.synth import sentences


def _trim(text: str, max_words: int) -> str:
    words = text.split(" ")
    return text if len(words) <= max_words else " ".join(words[:max_words]) + " ..."


def grounded_examples(retriever, embedder, rows: list[dict], k: int = 3, abstain_fraction: float = 0.3,
                      max_words: int = 80, seed: int = 0, show_progress: bool = True) -> list[dict]:
    """Chat examples {"messages": [...], "kind": "answer"|"abstain", "chunk_id"} from round-trip rows."""
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
        abstain = rng.random() < abstain_fraction
        if abstain:
            passages = [h for h in hits if h["source"] != own["source"]][:k]
            target = ABSTAIN
        else:
            body = own["text"]
            first, _, rest = body.partition("\n")
            if own.get("section") and own["section"] in first:  # the contextual header line is no answer
                body = rest
            candidates = sentences(_trim(body.strip(), max_words))  # only what the answerer will see
            if not candidates:
                continue
            qv, sv = embedder.embed([row["question"]]), embedder.embed(candidates)
            best = candidates[int(np.argmax(sv @ qv[0]))]
            others = [h for h in hits if h["id"] != own["id"] and h["source"] != own["source"]][:k - 1]
            passages = others[:]
            slot = rng.randrange(len(passages) + 1)
            passages.insert(slot, own)
            target = f"{best} [{slot + 1}]"
        if len(passages) < 2:
            continue
        sources = [Source(i, p["source"], p.get("section", ""), p["title"], _trim(p["text"], max_words),
                          p["start"], p["end"], 0.0) for i, p in enumerate(passages, start=1)]
        messages = grounded_messages(row["question"], sources) + [{"role": "assistant", "content": target}]
        examples.append({"messages": messages, "kind": "abstain" if abstain else "answer",
                         "chunk_id": row["chunk_id"]})
    bar.close()
    return examples
