"""Chapter 5, exercise "predict recall from the S-curve": plant near-duplicate pairs at known Jaccard
similarities, predict from 1-(1-J^r)^b how many of them LSH makes candidates at each bands x rows
setting, then measure it with llmlab's MinHash signatures and LSH buckets.

    python examples/solutions/05_s_curve.py

The prediction for a set of pairs is the S-curve averaged over their Jaccards (not the S-curve at
the threshold: pairs above it are found more often). The check: the measured share of candidate
pairs lies within 4 standard errors (+0.01) of the prediction at every setting.
"""

from __future__ import annotations

import random
import sys

import numpy as np

from llmlab.core.assets import pydocs_topics
from llmlab.data.curation.minhash import (MinHashConfig, all_shingle_hashes, lsh_buckets,
                                          signatures_from_hashes)

SETTINGS = ((32, 4), (20, 6), (14, 9), (9, 13), (6, 20))
PAIRS = 800
WORDS = 100


def planted_pairs(seed: int = 0) -> list[tuple[str, str]]:
    """PAIRS (original, copy) pairs of 100-word windows of the Python docs, the copy with 1..10
    words replaced, which puts their word-5-gram Jaccards between about 0.45 and 0.95."""
    words = " ".join(pydocs_topics().values()).split()
    rng = random.Random(seed)
    pairs = []
    for k in range(PAIRS):
        start = rng.randrange(len(words) - WORDS)
        original = words[start:start + WORDS]
        copy = list(original)
        for i in rng.sample(range(WORDS), rng.randint(1, 10)):
            copy[i] = f"edit{k}w{i}"
        pairs.append((" ".join(original), " ".join(copy)))
    return pairs


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


def main() -> int:
    pairs = planted_pairs()
    texts = [t for pair in pairs for t in pair]            # pair k = documents 2k and 2k+1
    hashes = all_shingle_hashes(texts, 5)
    j = np.array([jaccard(hashes[2 * k], hashes[2 * k + 1]) for k in range(PAIRS)])
    sigs = signatures_from_hashes(hashes, MinHashConfig(num_perm=128))
    print(f"{PAIRS} planted pairs, word-5-gram Jaccard {j.min():.2f}..{j.max():.2f} (median {np.median(j):.2f}); "
          "128 permutations\n")
    print("bands x rows | S-curve at J=0.8 | predicted share of pairs found | measured | difference / std error"
          " | J >= 0.8 only: predicted, measured")
    true = j >= 0.8
    ok = True
    for b, r in SETTINGS:
        at_threshold = 1 - (1 - 0.8 ** r) ** b
        p_pair = 1 - (1 - j ** r) ** b
        predicted = p_pair.mean()
        pairs, big = lsh_buckets(sigs, b, r)
        candidates = {tuple(p) for p in pairs.tolist()} | {(int(m[x]), int(m[y])) for m in big
                                                           for x in range(len(m)) for y in range(x + 1, len(m))}
        found = np.array([(2 * k, 2 * k + 1) in candidates for k in range(PAIRS)])
        measured = found.mean()
        se = np.sqrt((p_pair * (1 - p_pair)).sum()) / PAIRS   # independent pairs, each found w.p. p_pair
        z = (measured - predicted) / max(se, 1e-9)
        good = abs(measured - predicted) <= 4 * se + 0.01
        ok &= good
        print(f"{b:5d} x {r:<4d} | {at_threshold:16.3f} | {predicted:30.3f} | {measured:8.3f} | "
              f"{z:+5.1f}  {'ok' if good else 'FAIL':<16} | {p_pair[true].mean():.3f}, {found[true].mean():.3f}")
    print(f"\n{PAIRS} pairs, {true.sum()} of them at J >= 0.8 (the duplicates dedup should find)")
    if not ok:
        print("FAIL: a measured share is further from the S-curve than chance explains")
        return 1
    print("\nok: the S-curve predicts the share of pairs LSH finds at every setting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
