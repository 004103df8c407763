"""HNSW: Hierarchical Navigable Small World graphs (Malkov & Yashunin 2016, arXiv:1603.09320), in NumPy.

The idea: a stack of proximity graphs. Every vector is in layer 0; each is also in layers
1..L with L drawn from an exponential distribution (P(L >= l) = M^-l, so mL = 1/ln M), which
makes the upper layers sparse "express lanes". A search greedily walks the sparse top layer to
the closest node, drops a layer, repeats, and on layer 0 runs a best-first beam search that
keeps the `ef` closest nodes seen so far (Algorithm 2). Insertion is the same search with
`ef_construction`, then links the new node to M neighbours chosen by the diversity heuristic of
Algorithm 4 (keep a candidate only if it is closer to the new node than to every neighbour
already kept), which is what keeps clustered real data navigable.

Parameters (the defaults match hnswlib's recommendations):
    M                max links per node on layers >= 1; 2*M on layer 0 (paper, Sec. 4.1)
    ef_construction  beam width while inserting: higher = better graph, slower build
    ef               beam width while searching: the recall/speed knob, set per query (>= k)

Distances are on unit vectors: d(a, b) = 1 - a.b (hnswlib's "ip" space). Deletion marks a
tombstone: the node still routes searches (removing it would cut paths) but is never returned.

Where the time goes versus hnswlib (C++ with SIMD): per expanded node we pay a Python loop
iteration, a NumPy fancy-index, a tiny (<=32 x 384) matrix-vector product and heap pushes:
microseconds of interpreter overhead against ~100 ns of arithmetic. We vectorise what we can
(one product per expanded node over all its unvisited neighbours, a visited-epoch array instead
of a set) but the beam search itself is inherently sequential.
"""

from __future__ import annotations

import heapq
import json
import math
from pathlib import Path

import numpy as np

from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_save

FORMAT_VERSION = 1


class HNSW:
    def __init__(self, dim: int, M: int = 16, ef_construction: int = 200, seed: int = 0, capacity: int = 1024):
        self.dim, self.M, self.ef_construction = dim, M, ef_construction
        self.M0 = 2 * M
        self.mL = 1.0 / math.log(M)
        self.rng = np.random.default_rng(seed)
        # Free-form label of the data the graph was built from, saved with it; the store writes its
        # chunk version here so that it can tell a graph left behind by an interrupted build.
        self.tag = ""
        self.count = 0
        self.vectors = np.zeros((capacity, dim), dtype=np.float32)
        self.labels = np.zeros(capacity, dtype=np.int64)  # caller's id for each node
        self.levels = np.zeros(capacity, dtype=np.int32)
        self.deleted = np.zeros(capacity, dtype=bool)
        self.links0 = np.full((capacity, self.M0), -1, dtype=np.int32)  # layer 0, fixed width
        self.n_links0 = np.zeros(capacity, dtype=np.int32)
        self.upper: list[dict[int, np.ndarray]] = []  # upper[l-1][node] = neighbours on layer l
        self.entry = -1
        self.max_level = -1
        self._visit_epoch = 0
        self._visited = np.zeros(capacity, dtype=np.uint32)
        self._label_to_node: dict[int, int] = {}

    def __len__(self) -> int:
        return int(self.count - self.deleted[: self.count].sum())

    # ---- graph storage -------------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        cap = len(self.vectors)
        if need <= cap:
            return
        new = max(need, 2 * cap)
        def pad(a, fill):
            out = np.full((new, *a.shape[1:]), fill, dtype=a.dtype)
            out[:cap] = a
            return out
        self.vectors, self.labels, self.levels = pad(self.vectors, 0), pad(self.labels, 0), pad(self.levels, 0)
        self.deleted, self.links0, self.n_links0 = pad(self.deleted, False), pad(self.links0, -1), pad(self.n_links0, 0)
        self._visited = pad(self._visited, 0)

    def neighbours(self, node: int, level: int) -> np.ndarray:
        if level == 0:
            return self.links0[node, : self.n_links0[node]]
        return self.upper[level - 1].get(node, np.zeros(0, dtype=np.int32))

    def _set_neighbours(self, node: int, level: int, nbrs: list[int] | np.ndarray) -> None:
        nbrs = np.asarray(nbrs, dtype=np.int32)
        if level == 0:
            self.links0[node, : len(nbrs)] = nbrs
            self.links0[node, len(nbrs):] = -1
            self.n_links0[node] = len(nbrs)
        else:
            self.upper[level - 1][node] = nbrs

    # ---- search ----------------------------------------------------------------------------------
    def _new_epoch(self) -> int:
        self._visit_epoch += 1
        if self._visit_epoch >= 4_294_967_295:  # uint32 max: wrap around by clearing the marks
            self._visited[:] = 0
            self._visit_epoch = 1
        return self._visit_epoch

    def _search_layer(self, q: np.ndarray, entry: list[tuple[float, int]], ef: int, level: int) -> list[tuple[float, int]]:
        """Best-first beam search on one layer (paper Algorithm 2). Returns [(dist, node)] unsorted."""
        epoch = self._new_epoch()
        visited = self._visited
        candidates = list(entry)  # min-heap on distance: the frontier
        heapq.heapify(candidates)
        results = [(-d, n) for d, n in entry]  # max-heap (negated): the ef best so far
        heapq.heapify(results)
        for _, n in entry:
            visited[n] = epoch
        vectors = self.vectors
        if level == 0:  # layer 0 is a fixed-width array: slice it directly, no method call
            links, n_links = self.links0, self.n_links0
        while candidates:
            d, node = heapq.heappop(candidates)
            if d > -results[0][0] and len(results) >= ef:
                break  # the closest frontier node is worse than the worst result: done
            nbrs = links[node, : n_links[node]] if level == 0 else self.neighbours(node, level)
            nbrs = nbrs[visited[nbrs] != epoch]
            if len(nbrs) == 0:
                continue
            visited[nbrs] = epoch
            dists = 1.0 - vectors[nbrs] @ q
            bound = -results[0][0]
            if len(results) >= ef:
                # The bound only tightens inside the loop below, so neighbours that do not beat it
                # now never will: drop them in NumPy instead of visiting them in Python.
                keep = dists < bound
                dists, nbrs = dists[keep], nbrs[keep]
            for dn, n in zip(dists.tolist(), nbrs.tolist()):
                if len(results) < ef or dn < bound:
                    heapq.heappush(candidates, (dn, n))
                    heapq.heappush(results, (-dn, n))
                    if len(results) > ef:
                        heapq.heappop(results)
                    bound = -results[0][0]
        return [(-nd, n) for nd, n in results]

    def _greedy_descend(self, q: np.ndarray, down_to: int) -> list[tuple[float, int]]:
        """From the entry point, greedy search (ef=1) on each layer above `down_to`."""
        ep = [(float(1.0 - self.vectors[self.entry] @ q), self.entry)]
        for level in range(self.max_level, down_to, -1):
            ep = [min(self._search_layer(q, ep, 1, level))]
        return ep

    def search(self, query: np.ndarray, k: int = 10, ef: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(labels, similarities) of the approximate k nearest live nodes, best first."""
        if self.entry < 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        q = np.asarray(query, dtype=np.float32)
        found = self._search_layer(q, self._greedy_descend(q, 0), max(ef, k), 0)
        found = sorted((d, n) for d, n in found if not self.deleted[n])[:k]
        nodes = np.array([n for _, n in found], dtype=np.int64)
        return self.labels[nodes], np.array([1.0 - d for d, _ in found], dtype=np.float32)

    def search_batch(self, queries: np.ndarray, k: int = 10, ef: int = 64) -> np.ndarray:
        """[n, k] labels (-1 where fewer than k were found)."""
        out = np.full((len(queries), k), -1, dtype=np.int64)
        for i, q in enumerate(queries):
            labels, _ = self.search(q, k, ef)
            out[i, : len(labels)] = labels
        return out

    # ---- insertion ------------------------------------------------------------------------------
    def _select_heuristic(self, cands: list[tuple[float, int]], m: int) -> list[int]:
        """Paper Algorithm 4: walk candidates nearest first; keep one only if it is closer to the
        base than to every neighbour kept so far. Spreads links across directions/clusters."""
        cands = sorted(cands)
        if len(cands) <= m:
            return [n for _, n in cands]
        ids = np.array([n for _, n in cands], dtype=np.int64)
        pair = self.vectors[ids] @ self.vectors[ids].T  # all pairwise similarities at once
        kept: list[int] = []
        for i, (d, _) in enumerate(cands):
            if all(1.0 - pair[i, j] >= d for j in kept):
                kept.append(i)
                if len(kept) == m:
                    break
        return [int(ids[i]) for i in kept]

    def add(self, vectors: np.ndarray, labels: np.ndarray | list[int] | None = None, show_progress: bool = False) -> None:
        """Insert rows of `vectors` (unit-normalised) with the given integer labels."""
        from llmlab.core.progress import progress

        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if labels is None:
            labels = np.arange(self.count, self.count + len(vectors))
        self._grow(self.count + len(vectors))
        bar = progress(total=len(vectors), desc="hnsw build", unit="vec", disable=None if show_progress else True)
        for v, label in zip(vectors, labels):
            self._insert(v, int(label))
            bar.update(1)
        bar.close()

    def _insert(self, v: np.ndarray, label: int) -> None:
        if label in self._label_to_node:
            raise LLMLabError(f"HNSW label {label} is already in the index; delete it first")
        node = self.count
        self.count += 1
        level = int(-math.log(1.0 - self.rng.random()) * self.mL)
        self.vectors[node], self.labels[node], self.levels[node] = v, label, level
        self._label_to_node[label] = node
        while len(self.upper) < level:
            self.upper.append({})
        if self.entry < 0:
            self.entry, self.max_level = node, level
            return
        ep = self._greedy_descend(v, level)
        for lc in range(min(level, self.max_level), -1, -1):
            found = self._search_layer(v, ep, self.ef_construction, lc)
            chosen = self._select_heuristic(found, self.M)
            self._set_neighbours(node, lc, chosen)
            limit = self.M0 if lc == 0 else self.M
            for n in chosen:  # link back; if the neighbour is full, re-prune its list
                nbrs = self.neighbours(n, lc)
                if len(nbrs) < limit:
                    self._set_neighbours(n, lc, np.append(nbrs, node))
                else:
                    allc = np.append(nbrs, node)
                    dists = 1.0 - self.vectors[allc] @ self.vectors[n]
                    self._set_neighbours(n, lc, self._select_heuristic(list(zip(dists.tolist(), allc.tolist())), limit))
            ep = found
        if level > self.max_level:
            self.entry, self.max_level = node, level

    def delete(self, label: int) -> None:
        """Tombstone: the node keeps routing searches but is never returned."""
        node = self._label_to_node.pop(int(label), None)
        if node is None:
            raise LLMLabError(f"HNSW label {label} is not in the index")
        self.deleted[node] = True

    # ---- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """One .npz (atomic): vectors, labels, levels, tombstones, layer-0 links, upper layers flat."""
        n = self.count
        up_level, up_node, up_ptr, up_flat = [], [], [0], []
        for l, layer in enumerate(self.upper, start=1):
            for node, nbrs in layer.items():
                up_level.append(l)
                up_node.append(node)
                up_flat.extend(nbrs.tolist())
                up_ptr.append(len(up_flat))
        arrays = dict(format_version=np.array(FORMAT_VERSION), params=np.array([self.dim, self.M, self.ef_construction,
                      self.entry, self.max_level]), vectors=self.vectors[:n], labels=self.labels[:n],
                      levels=self.levels[:n], deleted=self.deleted[:n], links0=self.links0[:n],
                      n_links0=self.n_links0[:n], up_level=np.array(up_level, dtype=np.int32),
                      up_node=np.array(up_node, dtype=np.int32), up_ptr=np.array(up_ptr, dtype=np.int64),
                      up_flat=np.array(up_flat, dtype=np.int32), tag=np.array(self.tag),
                      # The level generator's state: without it a loaded graph would draw the
                      # levels of its next inserts from a fresh seed, repeating the first ones.
                      rng_state=np.array(json.dumps(self.rng.bit_generator.state)))
        atomic_save(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str | Path) -> "HNSW":
        path = Path(path)
        try:
            z = np.load(path)
            version = int(z["format_version"])
        except Exception as e:
            raise LLMLabError(f"{path} is not a readable HNSW index ({e}); rebuild it") from e
        if version != FORMAT_VERSION:
            raise LLMLabError(f"{path} is HNSW format {version}, this llmlab reads {FORMAT_VERSION}; rebuild it")
        dim, M, efc, entry, max_level = (int(x) for x in z["params"])
        n = len(z["labels"])
        index = cls(dim, M, efc, capacity=max(n, 1))
        index.count, index.entry, index.max_level = n, entry, max_level
        index.vectors[:n], index.labels[:n], index.levels[:n] = z["vectors"], z["labels"], z["levels"]
        index.deleted[:n], index.links0[:n], index.n_links0[:n] = z["deleted"], z["links0"], z["n_links0"]
        index.upper = [{} for _ in range(max(max_level, 0))]
        ptr, flat = z["up_ptr"], z["up_flat"]
        for i, (l, node) in enumerate(zip(z["up_level"].tolist(), z["up_node"].tolist())):
            index.upper[l - 1][node] = flat[ptr[i]:ptr[i + 1]].copy()
        index._label_to_node = {int(lab): i for i, lab in enumerate(index.labels[:n]) if not index.deleted[i]}
        index.tag = str(z["tag"]) if "tag" in z.files else ""
        if "rng_state" in z.files:
            index.rng.bit_generator.state = json.loads(str(z["rng_state"]))
        else:  # a file from before the state was saved: at least do not restart the stream at seed 0
            index.rng = np.random.default_rng([0, n])
        return index
