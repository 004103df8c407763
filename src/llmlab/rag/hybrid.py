"""Fusing a dense and a sparse ranking into one.

Reciprocal-rank fusion (Cormack, Clarke & Buettcher 2009): score(d) = sum_r 1 / (k + rank_r(d)),
k = 60. It needs only ranks, so BM25's unbounded scores and cosine similarities never have to be
put on one scale; a document high in both lists wins. Weighted score fusion instead normalises
each list's scores to [0, 1] (against the best score that missed the list, see weighted_fusion)
and mixes them with weight `alpha` on the dense side.

Weighted fusion is llmlab's default: it keeps how *much* better the top hit is, which ranks throw
away. On SQuAD dev (benchmarks/rag_retrieval.py, 2026-12-01, held-out half) alpha = 0.5 reached
recall@5 0.953 and recall@1 0.797 against RRF's 0.929 and 0.732; on the 66 questions whose terms
occur in at most 5 paragraphs, recall@1 0.818 against 0.606 with the plain min-max it replaced.
Bruch, Gai & Ingber (2023, "An Analysis of Fusion Functions for Hybrid Retrieval") found the
convex combination ahead of RRF in and out of domain. RRF needs no weight at all, which is its
argument when nothing labelled is at hand.
"""

from __future__ import annotations

from collections.abc import Sequence


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], k: int = 60, top: int | None = None) -> list[tuple[int, float]]:
    """[(item, fused score)] best first, from several best-first lists of item ids."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    out = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
    return out[:top] if top else out


def weighted_fusion(dense: Sequence[tuple[int, float]], sparse: Sequence[tuple[int, float]], alpha: float = 0.5,
                    top: int | None = None, candidates: int | None = None) -> list[tuple[int, float]]:
    """alpha * norm(dense) + (1 - alpha) * norm(sparse), best first; an item missing from a list gets 0 there.

    Each list is normalised to [0, 1] against a *floor*: the best score that did not make the
    list. With `candidates` = N and a list longer than N, the list is cut to its top N and the
    (N+1)-th score is the floor; a list no longer than N (or `candidates` None) is complete, and its
    floor is 0 (what BM25 gives a document sharing no query term, and cosine an unrelated one),
    or its lowest score if that is negative (only a dense list holding the whole corpus can be
    complete and negative, and then no item is absent from it).

    Why not plain min-max over the list: it maps the list's lowest hit to 0, exactly what an
    absent item gets, and a single-hit list (hi == lo) to 0 as well, so a rare-term query, where
    BM25 matches one or two chunks and hybrid should help most, lost its only BM25 evidence.
    Anchoring at the floor keeps min-max's scale (the top hit is 1, gaps keep their proportions)
    while giving every listed item more than any absent one (unless it ties with the item cut
    off, from which it is then indistinguishable), and a lone hit its full weight. It is the
    "theoretical min-max" of Bruch, Gai & Ingber (2023) when the list is complete, and an
    observed lower bound of the unlisted scores when it was cut.
    """
    def normalise(pairs: Sequence[tuple[int, float]]) -> dict[int, float]:
        pairs = list(pairs)
        if candidates is not None and len(pairs) > candidates:
            floor = pairs[candidates][1]  # lists are best first
            pairs = pairs[:candidates]
        else:
            floor = min([0.0] + [s for _, s in pairs])
        if not pairs:
            return {}
        span = max(s for _, s in pairs) - floor
        return {i: (s - floor) / span if span > 0 else 0.0 for i, s in pairs}

    d, s = normalise(dense), normalise(sparse)
    fused = {i: alpha * d.get(i, 0.0) + (1 - alpha) * s.get(i, 0.0) for i in set(d) | set(s)}
    out = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
    return out[:top] if top else out
