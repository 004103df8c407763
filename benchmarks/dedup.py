"""Near-dedup: llmlab's MinHash + LSH vs `datasketch`, same shingles / permutations / bands / threshold.

    python benchmarks/dedup.py            # 20,000 short documents
    python benchmarks/dedup.py --quick    # 4,000
    python benchmarks/dedup.py --plot docs/img/curation-dedup-tradeoff.png   # + bands/rows trade-off plot

Corpus: 60-word windows of the built-in Shakespeare and Python docs; 30% of the documents are
near copies of another one (possibly itself a copy), with 1..5 of 60 words replaced (word-5-gram
Jaccard ~0.45-0.85).

What is scored is what each tool decides, in the run that is timed: the documents it removes.
llmlab: `near_duplicates`' keep mask (and the verified pairs it returns). datasketch: its
MinHashLSH query results whose estimated Jaccard is >= 0.8, clustered by union-find with the first
document of each cluster kept (inside its timed region), which is what a datasketch user writes.
Truth: pairs whose exact word-5-gram Jaccard is >= 0.8, among a pool of the planted pairs, every
pair sharing an LSH band at any of the bands x rows settings below, and every pair datasketch
reports (the standard pooled evaluation: all-pairs truth on 20k documents would cost 2e8
Jaccards); a truth cluster is a connected component of true pairs, and every document of it but
the first should go. Removal precision = removed documents that should go / removed, recall =
/ documents that should go. Both tools: 128 permutations, 9 x 13, 14 x 9 and 20 x 6 bands x rows;
llmlab verifies with the estimate (verify=estimate, like datasketch) or the shingle sets
(verify=exact, the default). documents/s = shingles + signatures + index + verification +
clustering, one process, one thread.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

from _machine import describe
from llmlab.core.assets import pydocs_topics
from llmlab.data.curation.minhash import MinHashConfig, all_shingle_hashes, band_keys, near_duplicates, signatures_from_hashes
from llmlab.data.shakespeare import shakespeare_text

MAIN = ((9, 13), (14, 9), (20, 6))
SWEEP = ((32, 4), (20, 6), (16, 8), (14, 9), (9, 13), (8, 16), (6, 20))


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
    """All pairs sharing a band, found independently of the library (dicts, not its sorted runs):
    the LSH candidates, for the truth pool and the candidate columns of the sweep."""
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


def first_of_cluster_removals(n: int, pairs) -> set[int]:
    """Union-find over pairs; every document that has a smaller one in its cluster goes."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {i for i in range(n) if find(i) != i}


def run_ours(docs: list[str], cfg: MinHashConfig) -> tuple[set[int], set[tuple[int, int]], float]:
    """(removed documents, verified pairs, seconds): the library's own output, in the timed run."""
    t0 = time.perf_counter()
    hashes = all_shingle_hashes(docs, cfg.shingle_size)
    sigs = signatures_from_hashes(hashes, cfg)
    keep, _, pairs = near_duplicates(sigs, cfg, lambda idx: {int(i): hashes[i] for i in idx})
    seconds = time.perf_counter() - t0
    return set(np.flatnonzero(~keep).tolist()), {tuple(p) for p in pairs.tolist()}, seconds


def run_datasketch(docs: list[str], cfg: MinHashConfig) -> tuple[set[int], set[tuple[int, int]], float]:
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
    removed = first_of_cluster_removals(len(docs), pairs)
    return removed, pairs, time.perf_counter() - t0


def prf(pred: set, truth: set) -> tuple[float, float, float]:
    tp = len(pred & truth)
    p = tp / max(1, len(pred))
    r = tp / max(1, len(truth))
    return p, r, 2 * p * r / max(1e-9, p + r)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--plot", type=Path, help="also sweep bands x rows and plot the removals' precision/recall")
    args = ap.parse_args()
    n = 4000 if args.quick else args.docs
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass
    print(describe(threads=1))
    docs, planted = build_corpus(n)
    sets = [shingle_set(d) for d in docs]
    run_ours(docs[:300], MinHashConfig()), run_datasketch(docs[:300], MinHashConfig())  # warm-up: imports, caches
    results = []
    for bands, rows_ in MAIN:  # each tool's own decisions, timed; ours with both verifications
        theirs = run_datasketch(docs, MinHashConfig(num_perm=128, bands=bands, rows=rows_, threshold=0.8))
        for verify in ("estimate", "exact"):
            cfg = MinHashConfig(num_perm=128, bands=bands, rows=rows_, threshold=0.8, verify=verify)
            results.append((cfg, run_ours(docs, cfg), theirs))

    # the truth pool: planted pairs, LSH candidates at every setting, and whatever datasketch reported
    sigs = signatures_from_hashes(all_shingle_hashes(docs, 5), MinHashConfig(num_perm=128))
    candidates = {(b, r): bucket_pairs(sigs, b, r) for b, r in SWEEP}
    pool = set(planted).union(*candidates.values(), *[theirs[1] for _, _, theirs in results])
    jac = {p: len(sets[p[0]] & sets[p[1]]) / len(sets[p[0]] | sets[p[1]]) for p in pool}
    true_pairs = {p for p, j in jac.items() if j >= 0.8}
    should_go = first_of_cluster_removals(len(docs), true_pairs)
    print(f"{len(docs)} documents, {len(planted)} planted near copies; truth: {len(true_pairs)} pairs with J >= 0.8 "
          f"in a pool of {len(pool):,}, {len(should_go)} documents that should go; 128 permutations; candidates "
          f"verified at J >= 0.8 (datasketch: estimated J)\n")
    print("| bands x rows | method | removed | precision | recall | F1 | verified pairs with J >= 0.8 | "
          "documents/s | speed vs datasketch |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    shown = set()
    for cfg, ours, theirs in results:
        rows = [(f"llmlab, verify={cfg.verify}", ours)]
        if (cfg.bands, cfg.rows) not in shown:
            shown.add((cfg.bands, cfg.rows))
            rows.insert(0, ("datasketch 2.0, estimated J", theirs))
        for name, (removed, pairs, secs) in rows:
            p, r, f1 = prf(removed, should_go)
            pair_precision = sum(jac[q] >= 0.8 for q in pairs) / max(1, len(pairs))
            print(f"| {cfg.bands}x{cfg.rows} | {name} | {len(removed)} | {p:.3f} | {r:.3f} | {f1:.3f} | "
                  f"{pair_precision:.3f} of {len(pairs)} | {len(docs) / secs:,.0f} | {theirs[2] / secs:.2f}x |")
    if args.plot:
        plot_tradeoff(docs, candidates, true_pairs, should_go, np.array([jac[q] for q in true_pairs]), args.plot)
    return 0


def plot_tradeoff(docs, candidates, true_pairs, should_go, true_j: np.ndarray, path: Path) -> None:
    """Three panels, every colour and marker named in a legend, no text labels on the points:
    the S-curves (one colour per setting; the same colours on the other panels' x tick labels),
    then recall and precision of `near_duplicates`' removals per setting, for both verifications,
    beside two predictions from the S-curve: P(candidate) at the threshold, and its mean over the
    true pairs' Jaccards `true_j` (the expected recall of candidate pairs)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{b}x{r}" for b, r in SWEEP]
    colours = [f"C{i}" for i in range(len(SWEEP))]
    measured = {"estimate": ([], []), "exact": ([], [])}  # verify -> (precisions, recalls)
    print("\n| bands x rows | candidate pairs | precision (candidates) | recall (candidates) | "
          "removals P / R, verify=estimate | removals P / R, verify=exact |")
    print("|---|---:|---:|---:|---:|---:|")
    for b, r in SWEEP:
        cand = candidates[(b, r)]
        pc, rc, _ = prf(cand, true_pairs)
        cells = []
        for verify, (ps, rs) in measured.items():
            removed, _, _ = run_ours(docs, MinHashConfig(num_perm=128, bands=b, rows=r, threshold=0.8, verify=verify))
            p, rec, _ = prf(removed, should_go)
            ps.append(p)
            rs.append(rec)
            cells.append(f"{p:.3f} / {rec:.3f}")
        print(f"| {b}x{r} | {len(cand)} | {pc:.3f} | {rc:.3f} | {cells[0]} | {cells[1]} |")

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1.2, 1, 1]})
    js = np.linspace(0, 1, 201)
    for (b, r), name, colour in zip(SWEEP, names, colours):
        ax1.plot(js, 1 - (1 - js ** r) ** b, color=colour, label=name)
    ax1.axvline(0.8, color="gray", ls="--", lw=1, label="threshold J = 0.8")
    ax1.set_xlabel("Jaccard similarity J of a pair")
    ax1.set_ylabel("P(pair becomes a candidate)")
    ax1.set_title("LSH S-curves 1-(1-J^r)^b, b bands x r rows")
    ax1.legend(fontsize=8, title="bands x rows", title_fontsize=8, loc="upper left")

    x = np.arange(len(SWEEP))
    at_threshold = [1 - (1 - 0.8 ** r) ** b for b, r in SWEEP]
    expected = [float(np.mean(1 - (1 - true_j ** r) ** b)) for b, r in SWEEP]
    # the prediction as a wide pale band under the measured line: where they agree, it frames it
    ax2.plot(x, expected, "-", color="tab:blue", lw=8, alpha=0.25, solid_capstyle="round",
             label="predicted: S-curve averaged over the true pairs' J")
    ax2.plot(x, at_threshold, ":", color="gray", marker="s", ms=4, label="predicted: S-curve at J = 0.8")
    ax2.plot(x, measured["exact"][1], "k-x", label="measured, verify=exact (default)")
    ax2.plot(x, measured["estimate"][1], "k--o", mfc="none", label="measured, verify=estimate")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("recall (documents that should go)")
    ax2.set_title("removal recall per setting")
    ax2.legend(fontsize=7.5, loc="lower left")
    ax3.plot(x, measured["exact"][0], "k-x", label="measured, verify=exact (default)")
    ax3.plot(x, measured["estimate"][0], "k--o", mfc="none", label="measured, verify=estimate")
    ax3.set_ylim(min(measured["estimate"][0] + measured["exact"][0]) - 0.01, 1.005)
    ax3.set_ylabel("precision (documents removed)")
    ax3.set_title("removal precision per setting")
    ax3.legend(fontsize=8, loc="lower right")
    for ax in (ax2, ax3):
        ax.set_xticks(x, names)
        for label, colour in zip(ax.get_xticklabels(), colours):  # the left panel's colour per setting
            label.set_color(colour)
        ax.set_xlabel("bands x rows (colour as in the left panel)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    sys.exit(main())
