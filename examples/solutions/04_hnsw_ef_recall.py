"""Chapter 4, exercise "HNSW: M and ef against recall": build llmlab's HNSW on 1,500 loosely clustered unit
vectors for M = 4 and M = 16, then measure recall@10 against exact search for a sweep of ef. Checks:
recall never falls as ef grows (a wider beam explores a superset... almost always), a denser graph
(larger M) is at least as good at the same ef, and M = 16 with ef = 128 finds >= 95% of the true
neighbours.

    python examples/solutions/04_hnsw_ef_recall.py
"""

import time

import numpy as np

from llmlab.rag.hnsw import HNSW
from llmlab.rag.index_exact import ExactIndex

rng = np.random.default_rng(0)
centres = rng.normal(size=(20, 48))
base = centres[rng.integers(0, 20, 1500)] + 1.5 * rng.normal(size=(1500, 48))
queries = centres[rng.integers(0, 20, 200)] + 1.5 * rng.normal(size=(200, 48))
base = (base / np.linalg.norm(base, axis=1, keepdims=True)).astype(np.float32)
queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
truth, _ = ExactIndex(base).search_batch(queries, 10)

efs = [10, 20, 40, 80, 160]
table = {}
for M in (4, 16):
    t0 = time.perf_counter()
    graph = HNSW(dim=48, M=M, ef_construction=40, seed=0)
    graph.add(base)
    build = time.perf_counter() - t0
    recalls = []
    for ef in efs:
        found = graph.search_batch(queries, 10, ef)
        recalls.append(np.mean([len(set(f.tolist()) & set(t.tolist())) / 10 for f, t in zip(found, truth)]))
    table[M] = recalls
    print(f"M = {M:2d} (build {build:.1f} s): " + "  ".join(f"ef {ef}: {r:.3f}" for ef, r in zip(efs, recalls)))

for M, recalls in table.items():
    assert all(b >= a - 0.01 for a, b in zip(recalls, recalls[1:])), f"M={M}: recall fell as ef grew"
assert all(r16 >= r4 - 0.01 for r4, r16 in zip(table[4], table[16])), "M=16 should not lose to M=4"
assert table[16][efs.index(160)] >= 0.95, "M=16, ef=160 should find 95% of the true neighbours"
print("checks passed")
