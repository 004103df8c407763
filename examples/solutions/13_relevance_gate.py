"""Chapter 13, exercise "the relevance gate": the assistant abstains without a model call when no
retrieved chunk is similar enough to the question. The evidence is Assistant.support, the best
cosine similarity (MiniLM) between the question and a retrieved chunk; fused scores cannot serve,
as they are normalised per query. We index the three Quillmate notes in examples/assistant/notes.

    python examples/solutions/13_relevance_gate.py

Checks: every paraphrased on-topic question has a higher support than every off-topic one, and
the default AssistantConfig().min_similarity lies between the two groups (so the default gate
answers the first and abstains on the second).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from llmlab.assistant.config import AssistantConfig
from llmlab.assistant.pipeline import Assistant
from llmlab.rag.embed import Embedder
from llmlab.rag.ingest import iter_files, read_document
from llmlab.rag.store import Store

NOTES = Path(__file__).resolve().parents[1] / "assistant" / "notes"
# Paraphrases: none repeats the wording of the note that answers it.
ON_TOPIC = [
    "what happens if I edit the same note on my laptop and my desktop?",   # sync.md § Conflicts
    "can I stop syncing for a while?",                                      # sync.md § Pausing sync
    "how do I jump quickly to another note?",                               # shortcuts.md § Navigation
    "how much disk space do I need?",                                       # install.md § System requirements
]
OFF_TOPIC = [
    "what is the capital of France?",
    "how do I bake sourdough bread?",
    "who won the football world cup in 2018?",
    "how do I make my python class work with a with statement?",            # technical, but not about Quillmate
]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "kb", create=True)
        stats = store.index([read_document(p) for p in iter_files([NOTES])], Embedder(), [], "structure", 200, 0)
        store.close()
        print(f"indexed {stats['documents']} notes into {stats['chunks']} structure chunks")
        threshold = AssistantConfig().min_similarity
        assistant = Assistant(Path(tmp) / "kb", AssistantConfig(rerank=False, k=3))
        support = {}
        for q in ON_TOPIC + OFF_TOPIC:
            hits = assistant.retrieve(q)
            support[q] = assistant.support(q, hits)
            kind = "on " if q in ON_TOPIC else "off"
            print(f"  {kind}  support {support[q]:.3f}  top hit § {hits[0]['section']:45}  {q}")
        assistant.close()

    lowest_on = min(support[q] for q in ON_TOPIC)
    highest_off = max(support[q] for q in OFF_TOPIC)
    print(f"lowest on-topic support {lowest_on:.3f}, highest off-topic {highest_off:.3f}, "
          f"default min_similarity {threshold}")
    if not lowest_on > highest_off:
        print("FAIL: an off-topic question is at least as similar to the notes as an on-topic one; "
              "no threshold can separate them")
        return 1
    if not highest_off < threshold <= lowest_on:
        side = "abstains on an on-topic question" if threshold > lowest_on else "lets an off-topic question through"
        print(f"FAIL: the default min_similarity {threshold} {side}: the groups separate anywhere in "
              f"({highest_off:.3f}, {lowest_on:.3f}]")
        return 1
    print(f"ok: the default gate ({threshold}) answers all {len(ON_TOPIC)} on-topic questions "
          f"and abstains on all {len(OFF_TOPIC)} off-topic ones")
    return 0


if __name__ == "__main__":
    sys.exit(main())
