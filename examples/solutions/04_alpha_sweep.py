"""Chapter 4, exercise "Change the fusion alpha and measure recall": index the gold topics of
examples/questions.jsonl plus some neighbours from the built-in Python docs, then sweep weighted
fusion's alpha from 0 (BM25 only) to 1 (dense only). Checks the two ends: alpha 1 ranks exactly as
dense search and alpha 0 exactly as BM25 (recall@1/5/10 equal), so every value between is a mix.

    python examples/solutions/04_alpha_sweep.py
"""

import json
import tempfile
import time
from pathlib import Path

from llmlab.rag.embed import Embedder
from llmlab.rag.evaluate import metrics, relevance
from llmlab.rag.ingest import builtin_documents
from llmlab.rag.store import Retriever, Store

t0 = time.perf_counter()
root = Path(__file__).resolve().parents[1]
items = [json.loads(line) for line in (root / "questions.jsonl").read_text().splitlines() if line.strip()]
neighbours = {"pydocs:with", "pydocs:raise", "pydocs:global", "pydocs:while", "pydocs:return", "pydocs:del"}
keep = {it["gold_doc"] for it in items} | neighbours
docs = [d for d in builtin_documents("pydocs") if d.path in keep]
embedder = Embedder()
with tempfile.TemporaryDirectory() as tmp:
    store = Store(tmp, create=True)
    stats = store.index(docs, embedder)
    retriever = Retriever(store, embedder)
    print(f"{stats['documents']} documents, {stats['chunks']} chunks, {len(items)} questions")
    vectors = embedder.embed([it["question"] for it in items])
    ks = [1, 5, 10]

    def recall(mode: str, alpha: float = 0.5) -> dict:
        ranked = [retriever.search(it["question"], 10, mode, alpha=alpha, query_vec=v) for it, v in zip(items, vectors)]
        return metrics(relevance(ranked, items), ks)

    dense, bm25 = recall("dense"), recall("bm25")
    sweep = {alpha: recall("hybrid", alpha) for alpha in (0.0, 0.25, 0.5, 0.75, 1.0)}
    store.close()
print("| retriever | recall@1 | recall@5 | recall@10 | mrr@10 |\n|---|---:|---:|---:|---:|")
rows = [("dense", dense), ("bm25", bm25)] + [(f"hybrid alpha {a}", m) for a, m in sweep.items()]
for name, m in rows:
    print(f"| {name} | {m['recall@1']:.3f} | {m['recall@5']:.3f} | {m['recall@10']:.3f} | {m['mrr@10']:.3f} |")
for k in ks:
    assert sweep[1.0][f"recall@{k}"] == dense[f"recall@{k}"], "alpha 1 should rank as dense search"
    assert sweep[0.0][f"recall@{k}"] == bm25[f"recall@{k}"], "alpha 0 should rank as BM25"
print(f"alpha 1 == dense, alpha 0 == BM25: OK ({time.perf_counter() - t0:.0f} s)")
