"""Near-dedup: llmlab's MinHash + LSH vs `datasketch`, same shingles / permutations / bands / threshold.

    python benchmarks/dedup.py            # 20,000 short documents
    python benchmarks/dedup.py --quick    # 4,000
    python benchmarks/dedup.py --plot docs/img/curation-dedup-tradeoff.png   # + bands/rows trade-off plot

Corpus: 60-word windows of the built-in Shakespeare and Python docs; 30% of the documents are
near copies of another one, with 1..5 of 60 words replaced (word-5-gram Jaccard ~0.45-0.85).
Truth: pairs whose exact word-5-gram Jaccard is >= 0.8, pooled over the planted pairs and every
pair either tool reports (the standard pooled evaluation: all-pairs truth on 20k documents
would cost 2e8 Jaccards). Both tools: 128 permutations, 9 bands x 13 rows, 14 x 9 and 20 x 6; datasketch
keeps candidates whose estimated Jaccard is >= 0.8, llmlab either the same (verify=estimate) or
whose exact shingle-set Jaccard is (verify=exact, the default). Pair precision/recall;
documents/s = shingles + signatures + index + verification, one process, one thread.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

from llmlab.core.assets import pydocs_topics
from llmlab.data.curation.minhash import (MinHashConfig, all_shingle_hashes, band_keys, estimated_jaccard, exact_jaccard,
                                         near_duplicates, signatures, signatures_from_hashes)
from llmlab.data.shakespeare import shakespeare_text


def build_corpus(n_docs: int, seed: int = 0) -> tuple[list[str], list[tuple[int, int]]]:
    words = shakespeare_text().split() + " ".join(pydocs_topics().values()).split()
    base = [" ".join(words[i:i + 60]) for i in range(0, len(words) - 60, 60)]
    rng = random.Random(seed)
    n_copies = int(0.3 * n_docs)
    sources = rng.sample(range(len(base)), n_docs - n_copies)
    docs = [base[i] for i in sources]
    planted = []
    for k in range(n_copies):
        src = rng.randrange(len(docs))
        w = docs[src].split()
        for i in rng.sample(range(len(w)), rng.randint(1, 5)):
            w[i] = f"edit{k}x{i}"
        planted.append((src, len(docs)))
        docs.append(" ".join(w))
    order = list(range(len(docs)))
    rng.shuffle(order)
    where = {old: new for new, old in enumerate(order)}
    return [docs[i] for i in order], [tuple(sorted((where[a], where[b]))) for a, b in planted]


def shingle_set(text: str) -> set[str]:
    w = text.lower().split()
    return {" ".join(w[i:i + 5]) for i in range(max(1, len(w) - 4))}


def bucket_pairs(sigs: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    """All pairs sharing a band (not only the star edges the library needs), for pair metrics."""
    keys = band_keys(sigs, bands, rows)
    pairs: set[tuple[int, int]] = set()
    for b in range(bands):
        groups: dict[int, list[int]] = {}
        for i, k in enumerate(keys[:, b].tolist()):
            groups.setdefault(k, []).append(i)
        for members in groups.values():
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    pairs.add((members[x], members[y]))
    return pairs


def run_ours(docs: list[str], cfg: MinHashConfig) -> tuple[set[tuple[int, int]], float, np.ndarray]:
    t0 = time.perf_counter()
    hashes = all_shingle_hashes(docs, cfg.shingle_size)
    sigs = signatures_from_hashes(hashes, cfg)
    keep, _, _ = near_duplicates(sigs, cfg, lambda idx: {int(i): hashes[i] for i in idx})
    seconds = time.perf_counter() - t0
    cand = np.array(sorted(bucket_pairs(sigs, cfg.bands, cfg.rows)), dtype=np.int64).reshape(-1, 2)
    if not len(cand):
        return set(), seconds, keep
    sim = exact_jaccard(dict(enumerate(hashes)), cand) if cfg.verify == "exact" else estimated_jaccard(sigs, cand)
    return {tuple(p) for p in cand[sim >= cfg.threshold].tolist()}, seconds, keep


def run_datasketch(docs: list[str], cfg: MinHashConfig) -> tuple[set[tuple[int, int]], float]:
    from datasketch import MinHash, MinHashLSH

    t0 = time.perf_counter()
    shingles = [[s.encode() for s in shingle_set(d)] for d in docs]
    hashes = MinHash.bulk(shingles, num_perm=cfg.num_perm, seed=cfg.seed)
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, params=(cfg.bands, cfg.rows))
    pairs = set()
    for i, m in enumerate(hashes):
        for j in lsh.query(m):
            if m.jaccard(hashes[j]) >= cfg.threshold:
                pairs.add((j, i))
        lsh.insert(i, m)
    return pairs, time.perf_counter() - t0


def evaluate(pred: set, truth: set) -> tuple[float, float, float]:
    tp = len(pred & truth)
    p = tp / max(1, len(pred))
    r = tp / max(1, len(truth))
    return p, r, 2 * p * r / max(1e-9, p + r)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--plot", type=Path, help="also sweep bands x rows and plot precision/recall")
    args = ap.parse_args()
    n = 4000 if args.quick else args.docs
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass
    docs, planted = build_corpus(n)
    sets = [shingle_set(d) for d in docs]
    results = []
    run_ours(docs[:300], MinHashConfig()), run_datasketch(docs[:300], MinHashConfig())  # warm-up: imports, caches
    for bands, rows_ in ((9, 13), (14, 9), (20, 6)):
        theirs, t_theirs = run_datasketch(docs, MinHashConfig(num_perm=128, bands=bands, rows=rows_, threshold=0.8))
        for verify in ("estimate", "exact"):
            cfg = MinHashConfig(num_perm=128, bands=bands, rows=rows_, threshold=0.8, verify=verify)
            ours, t_ours, keep = run_ours(docs, cfg)
            results.append((cfg, ours, t_ours, theirs, t_theirs, int((~keep).sum())))
    pool = set(planted).union(*[r[1] | r[3] for r in results])
    jac = {p: len(sets[p[0]] & sets[p[1]]) / len(sets[p[0]] | sets[p[1]]) for p in pool}
    truth = {p for p, j in jac.items() if j >= 0.8}
    print(f"{len(docs)} documents, {len(planted)} planted near copies, {len(truth)} true pairs (J >= 0.8); "
          f"128 permutations; candidates verified at J >= 0.8 (datasketch: estimated J)\n")
    print("| bands x rows | method | precision | recall | F1 | documents/s | speed vs datasketch |")
    print("|---|---|---:|---:|---:|---:|---:|")
    shown = set()
    for cfg, ours, t_ours, theirs, t_theirs, removed in results:
        rows = [(f"llmlab, verify={cfg.verify} (removed {removed} docs)", ours, t_ours)]
        if (cfg.bands, cfg.rows) not in shown:
            shown.add((cfg.bands, cfg.rows))
            rows.append(("datasketch 2.0, estimated J", theirs, t_theirs))
        for name, pred, secs in rows:
            p, r, f1 = evaluate(pred, truth)
            print(f"| {cfg.bands}x{cfg.rows} | {name} | {p:.3f} | {r:.3f} | {f1:.3f} | {len(docs) / secs:,.0f} | "
                  f"{t_theirs / secs:.2f}x |")
    if args.plot:
        plot_tradeoff(docs, sets, truth, jac, args.plot)
    return 0


def plot_tradeoff(docs, sets, truth, jac, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [(32, 4), (20, 6), (16, 8), (14, 9), (9, 13), (8, 16), (6, 20)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    js = np.linspace(0, 1, 201)
    print("\n| bands x rows | candidate pairs | precision (candidates) | recall (candidates) | "
          "precision (verified) | recall (verified) |")
    print("|---|---:|---:|---:|---:|---:|")
    for b, r in settings:
        ax1.plot(js, 1 - (1 - js ** r) ** b, label=f"{b}x{r}")
        cfg = MinHashConfig(num_perm=128, bands=b, rows=r, threshold=0.8)
        sigs = signatures(docs, cfg)
        cand = bucket_pairs(sigs, b, r)
        arr = np.array(sorted(cand), dtype=np.int64).reshape(-1, 2)
        ver = {tuple(p) for p in arr[estimated_jaccard(sigs, arr) >= 0.8].tolist()} if len(arr) else set()
        for p in cand - set(jac):
            jac[p] = len(sets[p[0]] & sets[p[1]]) / len(sets[p[0]] | sets[p[1]])
        full_truth = truth | {p for p in cand if jac[p] >= 0.8}
        pc, rc, _ = evaluate(cand, full_truth)
        pv, rv, _ = evaluate(ver, full_truth)
        print(f"| {b}x{r} | {len(cand)} | {pc:.3f} | {rc:.3f} | {pv:.3f} | {rv:.3f} |")
        ax2.scatter([rc], [pc], marker="o")
        ax2.scatter([rv], [pv], marker="x")
        ax2.annotate(f"{b}x{r}", (rv, pv), fontsize=8)
    ax1.axvline(0.8, color="gray", ls="--")
    ax1.set_xlabel("Jaccard similarity")
    ax1.set_ylabel("P(candidate)")
    ax1.set_title("LSH S-curves, 1-(1-J^r)^b")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("recall")
    ax2.set_ylabel("precision")
    ax2.set_title("measured: o candidates, x after J-estimate check")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    sys.exit(main())
