"""Exact nearest-neighbour search: for unit vectors, cosine similarity is a dot product, so the
whole search is one matrix product followed by an O(n) argpartition for the top k."""

from __future__ import annotations

import numpy as np

from llmlab.rag.bm25 import top_k


class ExactIndex:
    def __init__(self, vectors: np.ndarray):
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, query: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(indices, similarities) of the k most similar rows to one query, best first."""
        sims = self.vectors @ np.asarray(query, dtype=np.float32)
        idx = top_k(sims, k)
        return idx, sims[idx]

    def search_batch(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """[n_queries, k] indices and similarities; one GEMM for all queries."""
        sims = np.asarray(queries, dtype=np.float32) @ self.vectors.T
        k = min(k, sims.shape[1])
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        part = np.take_along_axis(sims, idx, 1)
        order = np.argsort(-part, axis=1, kind="stable")
        return np.take_along_axis(idx, order, 1), np.take_along_axis(part, order, 1)
