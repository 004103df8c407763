"""Chapter 13, exercise "round-trip filtering": SmolLM2 writes one question per chunk of the three
Quillmate notes (llmlab.rag.synth.synthesize_questions, a forced question opening per chunk), and
round_trip_filter keeps a question only if hybrid search over the whole store ranks its own chunk
within keep_rank (Alberti et al. 2019). Kept questions are the labels `llmlab assistant tune`
trains the encoder on; the others are too vague, or about something else.

    python examples/solutions/13_round_trip.py

Checks: at least half of the chunks get a question that survives the filter at keep_rank=3, and
every kept question's chunk really is within the top 3 when we search again ourselves.
Read the kept questions too: with eight chunks, the top 3 is a loose filter, and a question the
corpus does not answer ("... a virtual environment in Python?") can still lead back to its chunk.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from llmlab.infer import Engine
from llmlab.rag.embed import Embedder
from llmlab.rag.ingest import iter_files, read_document
from llmlab.rag.store import Retriever, Store
from llmlab.rag.synth import read_jsonl, round_trip_filter, synthesize_questions

NOTES = Path(__file__).resolve().parents[1] / "assistant" / "notes"
KEEP_RANK = 3


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "kb", create=True)
        embedder = Embedder()
        store.index([read_document(p) for p in iter_files([NOTES])], embedder, [], "structure", 200, 0)
        retriever = Retriever(store, embedder)
        chunks = retriever.chunks
        print(f"{len(chunks)} structure chunks; SmolLM2 writes one question for each")

        questions = Path(tmp) / "questions.jsonl"
        rows = synthesize_questions(Engine.load("smollm2"), chunks, questions, show_progress=False)
        unusable = [r for r in read_jsonl(questions) if not r.get("question")]
        kept = round_trip_filter(retriever, rows, keep_rank=KEEP_RANK, show_progress=False)

        rank_of = {r["chunk_id"]: r["rank"] for r in kept}
        section = {c["id"]: c["section"] for c in chunks}
        ok = True
        for row in rows:
            # our own check of the rank, over every chunk, not just the top keep_rank
            ids = [h["id"] for h in retriever.search(row["question"], len(chunks), "hybrid")]
            rank = ids.index(row["chunk_id"]) + 1
            filtered = rank_of.get(row["chunk_id"])
            good = (filtered == rank) if rank <= KEEP_RANK else filtered is None
            ok &= good
            verdict = f"kept (rank {filtered})" if filtered else "dropped"
            print(f"  rank {rank}  {verdict:15} {'' if good else 'MISMATCH '}{row['question']}\n"
                  f"           from § {section[row['chunk_id']]}")
        for r in unusable:
            print(f"  (no usable question for § {section[r['chunk_id']]}: the reply was not a question)")
        store.close()

    print(f"kept {len(kept)} of {len(chunks)} chunks' questions at keep_rank={KEEP_RANK} "
          f"({len(rows)} usable, {len(unusable)} unusable)")
    if not ok:
        print("FAIL: round_trip_filter's kept set or ranks differ from a fresh search")
        return 1
    if 2 * len(kept) < len(chunks):
        print(f"FAIL: fewer than half of the {len(chunks)} chunks kept a question")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
