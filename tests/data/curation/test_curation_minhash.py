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


def _bucket_sigs(n: int, rng: np.random.Generator) -> np.ndarray:
    """n signatures that are equal on band 0 (rows 0..5 at 20 x 6) and random elsewhere: one
    LSH bucket, whatever the documents' real similarity."""
    sigs = rng.integers(0, 2**32 - 1, size=(n, 128), dtype=np.uint64).astype(np.uint32)
    sigs[:, :6] = 12345
    return sigs


def test_false_first_member_does_not_hide_true_duplicates_in_its_bucket():
    # A (index 0) is a false candidate in a bucket with B and C, which are near copies of each
    # other. Pairing every member only with the bucket's first member (a star) verifies A-B and
    # A-C, rejects both, and never compares B with C.
    rng = np.random.default_rng(0)
    sigs = _bucket_sigs(3, rng)
    # B and C agree on 109 of 128 rows (estimated J = 0.85) but on no band other than band 0:
    # one row differs in each of bands 1..19, so band 0's bucket is their only meeting point.
    sigs[2] = sigs[1]
    sigs[2, np.arange(6, 120, 6)] ^= 1
    sets = {0: np.arange(0, 100, dtype=np.uint64), 1: np.arange(1000, 1100, dtype=np.uint64),
            2: np.arange(1000, 1105, dtype=np.uint64)}  # J(B, C) = 100/105
    for verify in ("exact", "estimate"):
        keep, roots, pairs = near_duplicates(sigs, MinHashConfig(verify=verify), lambda idx: {int(i): sets[int(i)] for i in idx})
        assert keep.tolist() == [True, True, False], verify
        assert roots.tolist() == [0, 1, 1] and pairs.tolist() == [[1, 2]]


def test_big_bucket_is_verified_against_cluster_representatives():
    # 10 unrelated documents, then 40 copies of one text, all in one LSH bucket (more members
    # than the all-pairs cap): every copy after the first is removed, the unrelated ones stay.
    rng = np.random.default_rng(1)
    sigs = _bucket_sigs(50, rng)
    base = np.arange(5000, 5100, dtype=np.uint64)
    sets = {i: np.arange(100 * i, 100 * i + 100, dtype=np.uint64) for i in range(10)}
    sets |= {i: np.union1d(base, [9000 + i]) for i in range(10, 50)}
    asked = []

    def shingles(idx):
        asked.append(len(idx))
        return {int(i): sets[int(i)] for i in idx}

    keep, roots, pairs = near_duplicates(sigs, MinHashConfig(verify="exact"), shingles)
    assert keep.tolist() == [True] * 11 + [False] * 39
    assert set(roots[10:].tolist()) == {10} and asked == [50]  # shingles fetched once
    assert len(pairs) == 39  # each copy verified once against its cluster's representative
