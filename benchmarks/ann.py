"""Our NumPy HNSW (llmlab.rag.hnsw) vs hnswlib and FAISS IndexHNSWFlat on real sentence embeddings.

    .venv/bin/python benchmarks/ann.py            # up to 100,000 vectors (what 10 min of embedding gives), 1,000 queries
    .venv/bin/python benchmarks/ann.py --quick    # 20,000 vectors, 300 queries

Data: MiniLM (our encoder, truncated at 64 tokens: these are single sentences/lines) embeddings of
Shakespeare lines, SQuAD context sentences and Python-doc sentences, deduplicated, embedded in
blocks of 5,000 cached in benchmarks/.cache/ann-block-*.npy (a later run continues where the last
stopped, so repeated runs reach the full 100,000). Queries are held-out sentences of the same mix; truth is
exact inner-product search. All three indexes get the same M and efConstruction and run with one
thread. Prints one markdown table: build time, recall@10 and queries/s at each ef, with ratios.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
SQUAD = ROOT.parent / "shared" / "data" / "squad" / "dev-v1.1.json"


def sentences() -> list[str]:
    """Real English sentences from three sources, deduplicated, in a fixed shuffled order."""
    from llmlab.core.assets import pydocs_topics, shakespeare_plays_dir

    out = []
    for play in sorted(shakespeare_plays_dir().rglob("*.md")):
        for line in play.read_text(encoding="utf-8").splitlines():
            line = line.strip().strip("_*")
            if len(line) >= 20 and not line.startswith("#"):
                out.append(line)
    split = re.compile(r"(?<=[.!?])\s+")
    if SQUAD.is_file():
        for article in json.loads(SQUAD.read_text())["data"]:
            for para in article["paragraphs"]:
                out += [s for s in split.split(para["context"]) if len(s) >= 20]
    for text in pydocs_topics().values():
        out += [" ".join(s.split()) for s in split.split(text) if 20 <= len(s) <= 400]
    out = list(dict.fromkeys(out))
    order = np.random.default_rng(0).permutation(len(out))
    return [out[i] for i in order]


def vectors(n: int, n_queries: int, budget_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Embed sentences in blocks of 5,000 cached as .npy, stopping after `budget_s` seconds of embedding;
    the queries are the first `n_queries` sentences, the base set as many of the rest as are embedded (<= n)."""
    from llmlab.rag.embed import Embedder

    texts = sentences()
    block, blocks, emb, spent = 5000, [], None, 0.0
    for b in range(0, min(len(texts), n + n_queries), block):
        path = CACHE / f"ann-block-{b // block:03d}.npy"
        if not path.is_file():
            if spent > budget_s:
                break
            emb = emb or Embedder(max_seq_len=64, batch_size=128)
            t = time.perf_counter()
            v = emb.embed(texts[b:b + block])
            spent += time.perf_counter() - t
            CACHE.mkdir(parents=True, exist_ok=True)
            np.save(path, v)
            print(f"embedded sentences {b}-{b + len(v)} ({len(v) / (time.perf_counter() - t):.0f}/s)", file=sys.stderr)
        blocks.append(np.load(path))
    v = np.concatenate(blocks)
    return v[n_queries:n_queries + n], v[:n_queries]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / len(b) for a, b in zip(found, truth)]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int)
    ap.add_argument("--queries", type=int)
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=100)
    ap.add_argument("--efs", default="32,64,128,256")
    ap.add_argument("--no-faiss", action="store_true")
    ap.add_argument("--embed-budget", type=float, default=600, help="seconds of embedding before using what is cached")
    ap.add_argument("--embed-threads", type=int, default=2, help="torch threads for embedding (indexes always use 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.embed_threads)
    n = args.n or (20_000 if args.quick else 100_000)
    nq = args.queries or (300 if args.quick else 1000)
    efs = [int(e) for e in args.efs.split(",")]
    base, queries = vectors(n, nq, args.embed_budget)
    n = len(base)
    torch.set_num_threads(1)
    truth = np.argsort(-(queries @ base.T), axis=1)[:, :10]

    import hnswlib
    from llmlab.rag.hnsw import HNSW

    rows = {}
    graph_path = CACHE / f"ann-ours-{n}-{args.M}-{args.ef_construction}.npz"
    if graph_path.is_file():  # building is the slow part for a Python HNSW; cache it (build time kept in sidecar)
        ours = HNSW.load(graph_path)
        build = json.loads(graph_path.with_suffix(".json").read_text())["build_s"]
    else:
        t = time.perf_counter()
        ours = HNSW(base.shape[1], args.M, args.ef_construction)
        ours.add(base, show_progress=True)
        build = time.perf_counter() - t
        ours.save(graph_path)
        graph_path.with_suffix(".json").write_text(json.dumps({"build_s": build}))
    rows["llmlab (NumPy)"] = {"build": build}
    for ef in efs:
        t = time.perf_counter()
        found = ours.search_batch(queries, 10, ef)
        rows["llmlab (NumPy)"][ef] = (recall(found, truth), nq / (time.perf_counter() - t))

    ref = hnswlib.Index("ip", base.shape[1])
    ref.init_index(n, M=args.M, ef_construction=args.ef_construction, random_seed=0)
    ref.set_num_threads(1)
    t = time.perf_counter()
    ref.add_items(base)
    rows["hnswlib"] = {"build": time.perf_counter() - t}
    for ef in efs:
        ref.set_ef(ef)
        t = time.perf_counter()
        found, _ = ref.knn_query(queries, 10)
        rows["hnswlib"][ef] = (recall(found, truth), nq / (time.perf_counter() - t))

    if not args.no_faiss:
        import faiss

        faiss.omp_set_num_threads(1)
        fi = faiss.IndexHNSWFlat(base.shape[1], args.M, faiss.METRIC_INNER_PRODUCT)
        fi.hnsw.efConstruction = args.ef_construction
        t = time.perf_counter()
        fi.add(base)
        rows["faiss IndexHNSWFlat"] = {"build": time.perf_counter() - t}
        for ef in efs:
            fi.hnsw.efSearch = ef
            t = time.perf_counter()
            _, found = fi.search(queries, 10)
            rows["faiss IndexHNSWFlat"][ef] = (recall(found, truth), nq / (time.perf_counter() - t))

    print(f"\n{n:,} vectors x {base.shape[1]} (MiniLM sentence embeddings), {nq} held-out queries, "
          f"M={args.M}, efConstruction={args.ef_construction}, 1 thread; recall@10 vs exact search\n")
    head = "| index | build s | " + " | ".join(f"R@10 ef={ef} | q/s ef={ef}" for ef in efs) + " |"
    print(head + "\n|---|" + "---:|" * (1 + 2 * len(efs)))
    for name, r in rows.items():
        cells = [f"{r['build']:.1f}"]
        for ef in efs:
            cells += [f"{r[ef][0]:.4f}", f"{r[ef][1]:,.0f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    h, o = rows["hnswlib"], rows["llmlab (NumPy)"]
    print("| llmlab / hnswlib | " + " | ".join([f"{o['build'] / h['build']:.1f}x"] + sum(
        ([f"{o[ef][0] - h[ef][0]:+.4f}", f"{o[ef][1] / h[ef][1]:.3f}x"] for ef in efs), [])) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
