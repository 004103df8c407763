"""Chapter 4, exercise "RRF in five lines": write reciprocal rank fusion, check it against
llmlab.rag.hybrid.reciprocal_rank_fusion, and see the case the chapter describes: a chunk ranked 1st
by BM25 and 30th by dense loses to one ranked 3rd by both, while weighted score fusion, which sees
that the BM25 winner was far ahead, keeps it first.

    python examples/solutions/04_rrf_by_hand.py
"""

from llmlab.rag.hybrid import reciprocal_rank_fusion, weighted_fusion


def rrf(rankings: list[list[int]], k: int = 60) -> list[tuple[int, float]]:
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


# Items 0-39. Item 7: 1st by BM25, 30th by dense. Item 3: 3rd in both lists.
dense = [i for i in range(40) if i not in (3, 7)]
dense = dense[:2] + [3] + dense[2:28] + [7] + dense[28:]
bm25 = [7, 11, 3] + [i for i in range(40) if i not in (3, 7, 11)]
assert dense.index(7) == 29 and dense.index(3) == 2 and bm25.index(3) == 2

mine, library = rrf([dense, bm25]), reciprocal_rank_fusion([dense, bm25])
assert [i for i, _ in mine] == [i for i, _ in library]
assert all(abs(a - b) < 1e-12 for (_, a), (_, b) in zip(mine, library))
print("my RRF == reciprocal_rank_fusion: OK")
print(f"RRF top 3: {[i for i, _ in mine[:3]]}  (item 3: {dict(mine)[3]:.5f}, item 7: {dict(mine)[7]:.5f})")
assert dict(mine)[3] > dict(mine)[7] and mine[0][0] != 7, "RRF sees only ranks: 3rd + 3rd beats 1st + 30th"

# Scores: dense cosines close together; BM25 puts item 7 far ahead of the rest.
dense_scores = [(item, 0.80 - 0.005 * r) for r, item in enumerate(dense)]
bm25_scores = [(item, (19.0 if r == 0 else 9.0 - 0.1 * r)) for r, item in enumerate(bm25)]
fused = weighted_fusion(dense_scores, bm25_scores, alpha=0.5)
print(f"weighted fusion (alpha 0.5) top 3: {[i for i, _ in fused[:3]]}")
assert fused[0][0] == 7, "a far-ahead BM25 winner should stay first under score fusion"
