"""MinHash + LSH: estimates match true Jaccard like datasketch's, and dedup keeps one per cluster."""

from __future__ import annotations

import random

import numpy as np
import pytest

from llmlab.data.curation.minhash import (MinHashConfig, all_shingle_hashes, candidate_pairs, estimated_jaccard,
                                         exact_jaccard, near_duplicates, shingle_hashes, signatures)


def _random_doc(rng: random.Random, n: int = 120) -> list[str]:
    return [f"w{rng.randrange(20000)}" for _ in range(n)]


def _pairs_with_known_jaccard(n_pairs: int, seed: int = 0) -> tuple[list[str], list[float]]:
    """Document pairs edited at random rates; returns texts (a0, b0, a1, b1, ...) and true 5-gram Jaccard."""
    rng = random.Random(seed)
    texts, truth = [], []
    for _ in range(n_pairs):
        a = _random_doc(rng)
        b = list(a)
        for i in rng.sample(range(len(b)), rng.randrange(0, 12)):
            b[i] = f"edit{rng.randrange(10**9)}"
        sa = {tuple(a[i:i + 5]) for i in range(len(a) - 4)}
        sb = {tuple(b[i:i + 5]) for i in range(len(b) - 4)}
        texts += [" ".join(a), " ".join(b)]
        truth.append(len(sa & sb) / len(sa | sb))
    return texts, truth


def test_shingles_are_deterministic_and_distinct():
    h1 = shingle_hashes("a b c d e f a b c d e", 5)
    assert h1.size == 6  # "a b c d e" occurs twice -> counted once
    assert np.array_equal(h1, shingle_hashes("A  b c d E f a b c d e", 5))
    assert shingle_hashes("two words", 5).size == 1 and shingle_hashes("", 5).size == 0


def test_estimates_match_true_jaccard_as_well_as_datasketch():
    datasketch = __import__("pytest").importorskip("datasketch")
    texts, truth = _pairs_with_known_jaccard(150)
    cfg = MinHashConfig(num_perm=128)
    sigs = signatures(texts, cfg)
    pairs = np.arange(len(texts)).reshape(-1, 2)
    ours = estimated_jaccard(sigs, pairs)
    theirs = []
    for i in range(0, len(texts), 2):
        ms = []
        for t in texts[i:i + 2]:
            w = t.split()
            m = datasketch.MinHash(num_perm=128, seed=1)
            m.update_batch([" ".join(w[k:k + 5]).encode() for k in range(len(w) - 4)])
            ms.append(m)
        theirs.append(ms[0].jaccard(ms[1]))
    truth = np.array(truth)
    err_ours = np.abs(ours - truth).mean()
    err_theirs = np.abs(np.array(theirs) - truth).mean()
    # Both are unbiased estimators with std sqrt(J(1-J)/128) <= 0.044: mean abs error ~0.03.
    assert err_ours < 0.04 and err_theirs < 0.04
    assert err_ours < 1.3 * err_theirs
    assert abs((ours - truth).mean()) < 0.01  # no bias


def test_lsh_candidate_rate_follows_the_s_curve():
    texts, truth = _pairs_with_known_jaccard(300, seed=1)
    cfg = MinHashConfig(bands=9, rows=13)
    sigs = signatures(texts, cfg)
    found = {tuple(p) for p in candidate_pairs(sigs, cfg.bands, cfg.rows).tolist()}
    truth = np.array(truth)
    hit = np.array([(2 * i, 2 * i + 1) in found for i in range(len(truth))])
    high, low = truth >= 0.9, truth <= 0.5
    assert hit[high].mean() > 0.95      # P = 1-(1-0.9^13)^9 = 0.95 at J=0.9, higher above
    assert hit[low].mean() < 0.02       # P < 0.002 at J=0.5
    # no candidates between unrelated documents (different random vocabularies)
    assert all(j == i + 1 and i % 2 == 0 for i, j in found)


def test_near_duplicates_keep_first_of_each_cluster():
    rng = random.Random(3)
    base = [_random_doc(rng) for _ in range(20)]
    texts = [" ".join(d) for d in base]
    # doc 20 copies doc 5 with one edit, doc 21 copies doc 20 with one more edit (chain -> one cluster)
    d20 = list(base[5]); d20[60] = "x1"
    d21 = list(d20); d21[90] = "x2"
    texts += [" ".join(d20), " ".join(d21), ""]
    hashes = all_shingle_hashes(texts, 5)
    sigs = signatures(texts, MinHashConfig())
    for verify in ("exact", "estimate"):
        cfg = MinHashConfig(verify=verify)
        keep, roots, pairs = near_duplicates(sigs, cfg, lambda idx: {int(i): hashes[i] for i in idx})
        assert keep.tolist() == [True] * 20 + [False, False, True]
        assert roots[20] == roots[21] == 5
        assert len(pairs) >= 2
        if verify == "exact":  # every verified pair is a true near duplicate, measured on the sets
            assert (exact_jaccard(dict(enumerate(hashes)), pairs) >= cfg.threshold).all()
    with pytest.raises(ValueError, match="needs the documents' shingles"):
        near_duplicates(sigs, MinHashConfig(verify="exact"))
