"""Near-duplicate detection: MinHash signatures + LSH banding (Broder 1997; Leskovec, Rajaraman
& Ullman, "Mining of Massive Datasets", ch. 3), written here with the hashing vectorised in NumPy.

1. Shingles: a document is the set of its word n-grams (lower-cased, `shingle_size` words).
   Each word is hashed once (zlib.crc32, deterministic across processes unlike Python's
   salted `hash`); an n-gram's 64-bit hash is a polynomial in its word hashes, computed for
   all n-grams of a batch at once with shifted array views.
2. Signatures: `num_perm` hash functions h_k(x) = ((a_k * x + b_k) mod 2^64) >> 32 of the
   32-bit shingle hash x, the multiply-add-shift family (Dietzfelbinger 1996), evaluated as one (num_perm x shingles)
   uint64 array op; each document's signature is the column-wise minimum over its shingles
   (`np.minimum.reduceat`). P[sig_a[k] == sig_b[k]] = Jaccard(a, b).
3. LSH: the signature is cut into `bands` bands of `rows` rows; two documents become candidates
   when any band is identical. P[candidate] = 1 - (1 - J^r)^b, an S-curve whose midpoint is
   about (1/b)^(1/r). More bands -> higher recall but more false candidates; more rows -> a
   steeper curve shifted right. Candidates are then verified, `verify`:
     exact     the Jaccard of the two shingle-hash sets (sorted arrays: one `np.intersect1d`
               per candidate pair). No estimator noise: every kept pair really is >= threshold
               (up to 32-bit hash collisions), and none near the threshold is lost to noise;
     estimate  the signature agreement (estimated Jaccard), what datasketch's users do: no
               shingles needed, but std sqrt(J(1-J)/num_perm) ~ 0.035 at J = 0.8 with 128
               permutations, which both admits and rejects pairs near the threshold.
   Which pairs of a bucket are verified (`lsh_buckets`): every pair, in buckets of up to
   `ALL_PAIRS_MAX` members, which are nearly all of them (a few per duplicate cluster), so the
   clusters are exactly the connected components of the verified candidate pairs. Pairing each
   member with the bucket's first member only (a star) would keep the pair count linear and is
   enough for connectivity *before* verification, but not after it: if the first member is a
   false candidate, both its edges are rejected and true duplicates B and C in that bucket are
   never compared. A larger bucket (templated pages: hundreds of near copies) is verified member
   by member against the representatives of the clusters already found in it, joining every one
   it matches: linear in the bucket's size when it is one cluster, size x clusters at worst. The
   price there: a member similar only to a non-representative member (a chain A~B~C with
   J(A, C) below the threshold) is not joined through that bucket.
4. Clusters: union-find over verified pairs; the first document (in corpus order) of each
   cluster is kept, so the output does not depend on the number of workers.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
# Odd 64-bit multiplier for combining word hashes into an n-gram hash (golden-ratio constant).
_POLY = np.uint64(0x9E3779B97F4A7C15)
_EMPTY = np.uint32(0xFFFFFFFF)


@dataclass
class MinHashConfig:
    enabled: bool = field(default=True, metadata={"help": "near-dedup with MinHash + LSH"})
    shingle_size: int = field(default=5, metadata={"help": "words per shingle"})
    num_perm: int = field(default=128, metadata={"help": "hash functions (signature length)"})
    # 20 x 6: P[candidate] = 0.99 at J = 0.8 (14 x 9: 0.87, 9 x 13: 0.40), at the price of more
    # false candidates (S-curve midpoint ~0.61), which exact verification removes for little
    # time (benchmarks/dedup.py). With verify = "estimate", 14 x 9 balances its noise better.
    bands: int = field(default=20, metadata={"help": "LSH bands (bands * rows <= num_perm)"})
    rows: int = field(default=6, metadata={"help": "signature rows per band"})
    threshold: float = field(default=0.8, metadata={"help": "Jaccard above which two documents are duplicates"})
    verify: str = field(default="exact", metadata={
        "help": "how LSH candidates are confirmed: exact (Jaccard of the shingle sets) or estimate (signature agreement)",
        "choices": ["exact", "estimate"]})
    seed: int = field(default=1, metadata={"help": "seed of the hash functions"})


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the multiply-shift hash functions; `a` odd, as the family requires."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


def shingle_hashes(text: str, shingle_size: int, cache: dict[str, int] | None = None) -> np.ndarray:
    """32-bit hashes (in uint64) of the distinct word n-grams of `text` (a short text is one shingle)."""
    words = text.lower().split()
    if not words:
        return np.zeros(0, dtype=np.uint64)
    if cache is None:
        wh = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    else:
        wh = np.empty(len(words), dtype=np.uint64)
        for i, w in enumerate(words):
            h = cache.get(w)
            if h is None:
                h = cache[w] = zlib.crc32(w.encode())
            wh[i] = h
    n = min(shingle_size, len(words))
    m = len(words) - n + 1
    h = wh[:m].copy()
    with np.errstate(over="ignore"):  # uint64 wrap-around is the intended arithmetic
        for k in range(1, n):
            h = h * _POLY + wh[k:k + m]
        # final avalanche (splitmix64's mixer) so the low and high halves are both well mixed
        h ^= h >> np.uint64(31)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(29)
    # Keep 32 bits: multiply-add-shift below is 2-independent for 32-bit keys with 64-bit
    # arithmetic; with 64-bit keys it is not, and the MinHash estimates become biased.
    return np.unique(h >> _SHIFT32)


def all_shingle_hashes(texts: list[str], shingle_size: int) -> list[np.ndarray]:
    cache: dict[str, int] = {}  # word -> crc32: words repeat a lot, hashing each once pays
    return [shingle_hashes(t, shingle_size, cache) for t in texts]


def signatures(texts: list[str], cfg: MinHashConfig) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash signatures. Documents without words get all-ones."""
    return signatures_from_hashes(all_shingle_hashes(texts, cfg.shingle_size), cfg)


def signatures_from_hashes(hashes: list[np.ndarray], cfg: MinHashConfig, chunk_shingles: int = 8192) -> np.ndarray:
    """Signatures of documents given as their shingle-hash arrays (`shingle_hashes`)."""
    a, b = permutations(cfg.num_perm, cfg.seed)
    out = np.full((len(hashes), cfg.num_perm), _EMPTY, dtype=np.uint32)
    # Process documents in groups of about `chunk_shingles` shingles: num_perm x 8192 x 8 bytes
    # = 8 MiB stays in cache, measured 3x faster per shingle here than 64k-shingle groups.
    start = 0
    while start < len(hashes):
        end, total = start, 0
        while end < len(hashes) and (total == 0 or total + hashes[end].size <= chunk_shingles):
            total += hashes[end].size
            end += 1
        group = [h for h in hashes[start:end]]
        sizes = np.array([h.size for h in group])
        nonempty = np.nonzero(sizes)[0]
        if nonempty.size:
            flat = np.concatenate([group[i] for i in nonempty])
            with np.errstate(over="ignore"):  # in place: no (num_perm x shingles) temporaries
                phv = np.multiply.outer(a, flat)
                phv += b[:, None]
                phv >>= _SHIFT32
            offsets = np.concatenate([[0], np.cumsum(sizes[nonempty])[:-1]])
            out[start + nonempty] = np.minimum.reduceat(phv, offsets, axis=1).T
        start = end
    return out


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64 keys: each band's rows folded into one hash (equal rows -> equal key)."""
    if bands * rows > sigs.shape[1]:
        raise ValueError(f"bands * rows = {bands * rows} exceeds num_perm = {sigs.shape[1]}")
    keys = np.zeros((sigs.shape[0], bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for r in range(rows):
            keys = keys * _POLY + sigs[:, np.arange(bands) * rows + r].astype(np.uint64)
    return keys


# Buckets with up to this many members are verified all-pairs (at most 496 pairs each); bigger
# ones member by member against cluster representatives (see the module docstring, step 3).
ALL_PAIRS_MAX = 32


def lsh_buckets(sigs: np.ndarray, bands: int, rows: int, all_pairs_max: int = ALL_PAIRS_MAX,
                ) -> tuple[np.ndarray, list[np.ndarray]]:
    """(pairs, big): the (m, 2) int64 pairs i < j, without duplicates, of documents that share a
    band bucket of at most `all_pairs_max` members, and the sorted member arrays of the bigger
    buckets (each distinct member set once).

    Per band: sort the keys (stable, so a run of equal keys lists its members in corpus order);
    documents d positions apart in the sorted order share a bucket when their keys are equal,
    which finds all pairs of the small buckets with one vectorised comparison per distance d."""
    keys = band_keys(sigs, bands, rows)
    n = sigs.shape[0]
    codes, big = [], {}
    for band in range(bands):
        k = keys[:, band]
        order = np.argsort(k, kind="stable")
        ks = k[order]
        starts = np.flatnonzero(np.concatenate([[True], ks[1:] != ks[:-1]]))
        lengths = np.diff(np.append(starts, n))
        small = np.repeat(lengths <= all_pairs_max, lengths)  # per sorted position
        longest = int(lengths[lengths <= all_pairs_max].max(initial=1))
        for d in range(1, longest):
            same = (ks[d:] == ks[:-d]) & small[d:]
            codes.append(order[:-d][same].astype(np.int64) * n + order[d:][same])
        for s0, length in zip(starts[lengths > all_pairs_max].tolist(), lengths[lengths > all_pairs_max].tolist()):
            members = np.sort(order[s0:s0 + length])
            big[members.tobytes()] = members
    codes = np.unique(np.concatenate(codes)) if codes else np.zeros(0, dtype=np.int64)
    return np.stack([codes // n, codes % n], axis=1), list(big.values())


def candidate_pairs(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(m, 2) int64 index pairs i < j that share at least one band, without duplicates: every
    pair, including those of big buckets (quadratic there; for analysis, not used by dedup)."""
    pairs, big = lsh_buckets(sigs, bands, rows)
    extra = [np.stack(np.triu_indices(len(m), 1), axis=1) for m in big]
    if extra:
        pairs = np.concatenate([pairs] + [m[e] for m, e in zip(big, extra)])
        pairs = np.unique(pairs, axis=0)
    return pairs


def estimated_jaccard(sigs: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    return (sigs[pairs[:, 0]] == sigs[pairs[:, 1]]).mean(axis=1)


def exact_jaccard(shingles: dict[int, np.ndarray], pairs: np.ndarray) -> np.ndarray:
    """Jaccard of the shingle-hash sets (sorted, unique arrays) of each pair."""
    out = np.empty(len(pairs))
    for k, (i, j) in enumerate(pairs.tolist()):
        a, b = shingles[i], shingles[j]
        inter = np.intersect1d(a, b, assume_unique=True).size
        out[k] = inter / max(1, a.size + b.size - inter)
    return out


def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


def near_duplicates(sigs: np.ndarray, cfg: MinHashConfig,
                    shingles: Callable[[np.ndarray], dict[int, np.ndarray]] | None = None,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keep mask, cluster representative per document, verified pairs).

    shingles(indices) -> {index: shingle-hash array}: needed by verify="exact"; it is asked once,
    only for the documents in candidate buckets, so a caller can fetch them from disk.
    The representative of a cluster is its smallest index = the first document in corpus order."""
    if cfg.verify not in ("exact", "estimate"):
        raise ValueError(f"MinHashConfig.verify = {cfg.verify!r}: use exact or estimate")
    if cfg.verify == "exact" and shingles is None:
        raise ValueError("verify='exact' needs the documents' shingles (pass shingles=...), or use verify='estimate'")
    n = sigs.shape[0]
    # Documents without any shingle all share the all-ones signature; never call them duplicates
    # (nor let them form one giant bucket).
    live = np.flatnonzero(~(sigs == _EMPTY).all(axis=1))
    pairs, big = lsh_buckets(sigs[live], cfg.bands, cfg.rows)
    pairs, big = live[pairs].reshape(-1, 2), [live[m] for m in big]
    sets = None
    if cfg.verify == "exact" and (len(pairs) or big):
        sets = shingles(np.unique(np.concatenate([pairs.ravel()] + big)))

    def similar(p: np.ndarray) -> np.ndarray:
        sim = exact_jaccard(sets, p) if cfg.verify == "exact" else estimated_jaccard(sigs, p)
        return sim >= cfg.threshold

    parent = np.arange(n)

    def union(i: int, j: int) -> None:
        ri, rj = _find(parent, i), _find(parent, j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)  # the root is always the smallest index

    verified = [pairs[similar(pairs)]] if len(pairs) else []
    for i, j in (verified[0].tolist() if verified else []):
        union(i, j)
    checked: set[tuple[int, int]] = set()
    for members in big:
        reps: list[int] = []  # the first member of each cluster met in this bucket
        for m in members.tolist():
            todo = np.array([(r, m) for r in reps if (r, m) not in checked
                             and _find(parent, r) != _find(parent, m)], dtype=np.int64).reshape(-1, 2)
            checked.update(map(tuple, todo.tolist()))
            ok = todo[similar(todo)] if len(todo) else todo
            for r, _ in ok.tolist():
                union(r, m)
            verified.append(ok)
            if not any(_find(parent, r) == _find(parent, m) for r in reps):
                reps.append(m)
    pairs = np.concatenate(verified) if verified else np.zeros((0, 2), dtype=np.int64)
    roots = np.array([_find(parent, i) for i in range(n)], dtype=np.int64)
    return roots == np.arange(n), roots, pairs
