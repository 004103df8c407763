"""The --store directory: one SQLite database (documents, chunks, embeddings) + an HNSW file.

Layout of a store directory:
    store.sqlite     tables meta, documents, chunks, embeddings (vector BLOBs keyed by chunk-text hash);
                     chunk ids are AUTOINCREMENT, never reused, because they are the HNSW labels
    hnsw-<gen>.npz   the HNSW graph over the chunk vectors at generation <gen> (written atomically)

Why the vectors live in SQLite: the chunks and the vectors they need then commit together, so a
crash mid-index leaves the previous consistent state. Indexing runs in two steps:
1. embed: the vectors of chunk texts not yet in `embeddings` are committed batch by batch
   (Store.embed_batch texts per transaction). That table is a cache keyed by text hash, so vectors
   without a chunk are harmless; a crash here keeps the previous state plus the vectors made so
   far, and a re-run embeds only the rest.
2. one transaction writes documents, chunks and meta and drops vectors no chunk uses.
The HNSW file is derived data, built
after that transaction commits; its generation number is committed in `meta` only after the file
is saved. So a re-index interrupted during the graph build (Ctrl-C) leaves new chunks beside the
previous generation's graph. To tell, every transaction that changes chunks bumps
`meta.chunks_version`, and the graph file carries the version it was built for (`HNSW.tag`);
opening a graph whose version or label set differs from the chunks table says so and brings it up
to date from the stored vectors (no re-embedding), as it does for a missing file.

A store may carry its own encoder (e.g. one fine-tuned on its documents): `meta.encoder` names its
directory, relative to the store; `store_embedder(store)` loads it (else the built-in MiniLM), and
`Store.reembed` switches every vector to a new encoder, resumably (staged in `embeddings_next`).

Re-indexing is incremental: a document whose content hash is unchanged is skipped; a changed one
has its chunks replaced (chunk texts already embedded come from the embedding table, so only new
text is embedded); a source that disappeared from an indexed directory has its chunks deleted
(tombstoned in the HNSW graph).
"""

from __future__ import annotations

import fnmatch
import sqlite3
import sys
from pathlib import Path

import numpy as np

from llmlab.core.errors import LLMLabError
from llmlab.rag.bm25 import BM25
from llmlab.rag.chunking import chunk_document
from llmlab.core.progress import progress
from llmlab.rag.embed import Embedder, content_hash
from llmlab.rag.hnsw import HNSW
from llmlab.rag.hybrid import reciprocal_rank_fusion, weighted_fusion
from llmlab.rag.index_exact import ExactIndex
from llmlab.rag.ingest import Document

FORMAT_VERSION = 1
DB_FILE = "store.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS documents (id INTEGER PRIMARY KEY, path TEXT UNIQUE, title TEXT, hash TEXT,
                                      mtime REAL, text TEXT);
CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY AUTOINCREMENT, doc_id INTEGER REFERENCES documents(id), ord INTEGER,
                                   text TEXT, start INTEGER, "end" INTEGER, window TEXT, hash TEXT,
                                   section TEXT DEFAULT '');
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE TABLE IF NOT EXISTS embeddings (hash TEXT PRIMARY KEY, vec BLOB);
CREATE TABLE IF NOT EXISTS embeddings_next (hash TEXT PRIMARY KEY, vec BLOB);
"""


class Store:
    embed_batch = 256  # texts embedded per committed transaction (what a crash can lose)

    def __init__(self, directory: str | Path, create: bool = False):
        self.dir = Path(directory)
        db = self.dir / DB_FILE
        if not db.is_file() and not create:
            raise LLMLabError(f"{self.dir} is not a RAG store (no {DB_FILE}): build one with "
                              f"`llmlab rag index <docs> --store {self.dir}`")
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(db))
            self.db.executescript(_SCHEMA)
            self.meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
            if "section" not in {r[1] for r in self.db.execute("PRAGMA table_info(chunks)")}:
                with self.db:  # a store from before heading paths (same format otherwise)
                    self.db.execute("ALTER TABLE chunks ADD COLUMN section TEXT DEFAULT ''")
        except sqlite3.DatabaseError as e:
            raise LLMLabError(f"{db} is not a readable SQLite database ({e}): delete the store and re-index") from e
        version = int(self.meta.get("format_version", FORMAT_VERSION))
        if version != FORMAT_VERSION:
            raise LLMLabError(f"{self.dir} is RAG store format {version}; this llmlab reads format {FORMAT_VERSION}: "
                              f"re-index into a new --store directory")

    def close(self) -> None:
        self.db.close()

    def _set_meta(self, **kv) -> None:
        for k, v in kv.items():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, str(v)))
            self.meta[k] = str(v)

    def check_model(self, model_id: str) -> None:
        built = self.meta.get("embed_model")
        if built and built != model_id:
            raise LLMLabError(f"{self.dir} was built with embedding model {built!r}, not {model_id!r}: its vectors "
                              f"are not comparable; use that model or index into a new --store directory")

    # ---- indexing ---------------------------------------------------------------------------
    def index(self, docs: list[Document], embedder, prune_prefixes: list[str] = (), method: str = "recursive",
              size: int = 200, overlap: int = 40, parent_tokens: int = 400, show_progress: bool = False) -> dict:
        """Add/update `docs`; delete stored documents under `prune_prefixes` that are not in `docs`.
        Safe to interrupt at any point, and a re-run re-embeds nothing already embedded."""
        if not self.db.execute("SELECT 1 FROM chunks LIMIT 1").fetchone() and \
                self.meta.get("embed_model") != embedder.model_id:
            with self.db:  # an empty store takes any model; cached vectors of another one must go
                self.db.execute("DELETE FROM embeddings")
                self._set_meta(format_version=FORMAT_VERSION, embed_model=embedder.model_id)
        self.check_model(embedder.model_id)
        params = f"{method}:{size}:{overlap}" + (f":{parent_tokens}" if method == "structure" else "")
        rechunk_all = self.meta.get("chunking", params) != params  # new chunking: every doc is "changed"
        stats = {"added": 0, "updated": 0, "unchanged": 0, "deleted": 0}
        # 1. plan, writing nothing: which documents changed, and their new chunks
        stored = {path: (doc_id, h) for doc_id, path, h in self.db.execute("SELECT id, path, hash FROM documents")}
        changed, seen = [], set()
        for doc in docs:
            if doc.path in seen:
                continue
            seen.add(doc.path)
            row = stored.get(doc.path)
            if row and row[1] == doc.hash and not rechunk_all:
                stats["unchanged"] += 1
                continue
            chunks = chunk_document(doc.text, embedder.count_tokens, method, size, overlap, title=doc.title,
                                    parent_tokens=parent_tokens)
            changed.append((doc, row[0] if row else None, chunks))
        gone = [doc_id for path, (doc_id, _) in stored.items()
                if path not in seen and any(path.startswith(p) for p in prune_prefixes)]
        # 2. vectors for texts the cache lacks, committed batch by batch
        texts = {content_hash(c.text): c.text for _, _, chunks in changed for c in chunks}
        stats["embedded"] = self._embed_missing(texts, embedder, "embeddings", show_progress)
        # 3. one transaction: documents, chunks, meta
        with self.db:
            self._set_meta(format_version=FORMAT_VERSION, embed_model=embedder.model_id, chunking=params)
            for doc, doc_id, chunks in changed:
                if doc_id is not None:
                    self.db.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
                    self.db.execute("UPDATE documents SET title=?, hash=?, mtime=?, text=? WHERE id=?",
                                    (doc.title, doc.hash, doc.mtime, doc.text, doc_id))
                    stats["updated"] += 1
                else:
                    doc_id = self.db.execute("INSERT INTO documents (path, title, hash, mtime, text) VALUES (?,?,?,?,?)",
                                             (doc.path, doc.title, doc.hash, doc.mtime, doc.text)).lastrowid
                    stats["added"] += 1
                self.db.executemany(
                    'INSERT INTO chunks (doc_id, ord, text, start, "end", window, hash, section) VALUES (?,?,?,?,?,?,?,?)',
                    [(doc_id, i, c.text, c.start, c.end, c.window, content_hash(c.text), c.section)
                     for i, c in enumerate(chunks)])
            for doc_id in gone:
                self.db.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
                self.db.execute("DELETE FROM documents WHERE id = ?", (doc_id,))
                stats["deleted"] += 1
            self.db.execute("DELETE FROM embeddings WHERE hash NOT IN (SELECT hash FROM chunks)")
            if changed or gone:  # the graph must follow
                self._set_meta(chunks_version=int(self.meta.get("chunks_version") or 0) + 1)
        stats["chunks"] = self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        stats["documents"] = self.db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
        self.update_hnsw(show_progress=show_progress)
        return stats

    def _embed_missing(self, texts: dict[str, str], embedder, table: str, show_progress: bool) -> int:
        """Embed the texts (hash -> text) whose hash has no row in `table`, committing every
        `embed_batch` texts; returns how many were embedded."""
        have = {r[0] for r in self.db.execute(f"SELECT hash FROM {table}")}
        missing = sorted(((h, t) for h, t in texts.items() if h not in have), key=lambda ht: len(ht[1]))
        bar = progress(total=len(missing), desc="embed", unit="text", disable=None if show_progress else True)
        try:  # texts sorted by length: each batch pads to similar lengths
            for i in range(0, len(missing), self.embed_batch):
                batch = missing[i:i + self.embed_batch]
                vecs = embedder.embed([t for _, t in batch])
                with self.db:
                    self.db.executemany(f"INSERT OR REPLACE INTO {table} VALUES (?, ?)",
                                        [(h, v.astype(np.float32).tobytes()) for (h, _), v in zip(batch, vecs)])
                bar.update(len(batch))
        finally:
            bar.close()
        return len(missing)

    # ---- the store's encoder ----------------------------------------------------------------
    def set_encoder(self, encoder: str | Path | None) -> None:
        """Record the encoder directory (relative to the store directory; None = the built-in
        MiniLM) that store_embedder loads. Its vectors must be the store's: index an empty store
        after this, or switch the vectors with `reembed` (which records the encoder itself)."""
        with self.db:
            if encoder is None:
                self.db.execute("DELETE FROM meta WHERE key = 'encoder'")
                self.meta.pop("encoder", None)
                return
            path = self.dir / encoder
            if not all((path / f).is_file() for f in ("model.safetensors", "config.json", "vocab.txt")):
                raise LLMLabError(f"{path} is not an encoder directory (model.safetensors, config.json, vocab.txt): "
                                  f"save the encoder there first")
            self._set_meta(encoder=self._relative(path))

    def _relative(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.dir.resolve()))
        except ValueError:  # outside the store: kept absolute
            return str(path.resolve())

    def reembed(self, embedder, show_progress: bool = False) -> int:
        """Re-embed every chunk with `embedder` and make it the store's model (meta embed_model and
        encoder), then rebuild the HNSW graph. Resumable: new vectors are staged and committed in
        batches; only the last transaction swaps them in. Returns the texts embedded by this call."""
        if embedder.model_id == self.meta.get("embed_model"):
            return 0
        with self.db:
            if self.meta.get("reembed_model") != embedder.model_id:  # staged vectors of another model
                self.db.execute("DELETE FROM embeddings_next")
                self._set_meta(reembed_model=embedder.model_id)
        texts = dict(self.db.execute("SELECT hash, text FROM chunks").fetchall())
        n = self._embed_missing(texts, embedder, "embeddings_next", show_progress)
        with self.db:
            self.db.execute("DELETE FROM embeddings")
            self.db.execute("INSERT INTO embeddings SELECT hash, vec FROM embeddings_next "
                            "WHERE hash IN (SELECT hash FROM chunks)")
            self.db.execute("DELETE FROM embeddings_next")
            self.db.execute("DELETE FROM meta WHERE key IN ('reembed_model', 'encoder')")
            self.meta.pop("reembed_model", None)
            self.meta.pop("encoder", None)
            model_dir = getattr(embedder, "model_dir", None)
            if model_dir is not None and not _is_builtin_encoder(model_dir):
                self._set_meta(encoder=self._relative(Path(model_dir)))
            self._set_meta(embed_model=embedder.model_id, hnsw_gen=0)  # gen 0: the old graph is void
        self.update_hnsw(show_progress=show_progress)
        return n

    # ---- vectors and graph ------------------------------------------------------------------
    def chunk_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids, float32 [n, dim] vectors) for every chunk, ordered by chunk id."""
        rows = self.db.execute("SELECT c.id, e.vec FROM chunks c JOIN embeddings e ON e.hash = c.hash "
                               "ORDER BY c.id").fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        if not rows:
            return ids, np.zeros((0, 384), dtype=np.float32)
        return ids, np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])

    def _hnsw_path(self, gen: int) -> Path:
        return self.dir / f"hnsw-{gen}.npz"

    def load_hnsw(self) -> HNSW:
        """The graph of the current chunks: the saved generation when it matches the chunks table
        (version and labels), else that graph (or a new one) brought up to date, with a message."""
        gen = int(self.meta.get("hnsw_gen", 0))
        path = self._hnsw_path(gen)
        graph = HNSW.load(path) if gen and path.is_file() else None
        version = self.meta.get("chunks_version", "")
        if graph is not None:
            ids = {r[0] for r in self.db.execute("SELECT id FROM chunks").fetchall()}
            if graph.tag == version and set(graph._label_to_node) == ids:
                return graph
            why = (f"is stale (built for chunk version {graph.tag or '?'}, the store is at {version or '?'}; "
                   f"was `llmlab rag index` interrupted?)")
        else:
            why = "is missing"
        print(f"{self.dir}: the HNSW graph {why}: updating it from the stored vectors", file=sys.stderr)
        return self.update_hnsw(graph=graph)

    def update_hnsw(self, M: int = 16, ef_construction: int = 200, show_progress: bool = False,
                    graph: HNSW | None = None) -> HNSW:
        """Bring the graph (default: the saved generation) up to date: tombstone removed chunks,
        insert new ones, save it as a new generation tagged with the chunk version."""
        ids, vecs = self.chunk_vectors()
        gen = int(self.meta.get("hnsw_gen", 0))
        path = self._hnsw_path(gen)
        if graph is None:
            graph = HNSW.load(path) if gen and path.is_file() else HNSW(vecs.shape[1], M, ef_construction)
        version = self.meta.get("chunks_version", "")
        live = set(graph._label_to_node)
        want = set(ids.tolist())
        if live == want and gen and graph.tag == version and path.is_file():
            return graph
        for label in live - want:
            graph.delete(label)
        add = np.array(sorted(want - live), dtype=np.int64)
        if len(add):
            row = {cid: i for i, cid in enumerate(ids.tolist())}
            graph.add(vecs[[row[c] for c in add.tolist()]], add, show_progress=show_progress)
        graph.tag = version
        graph.save(self._hnsw_path(gen + 1))
        with self.db:
            self._set_meta(hnsw_gen=gen + 1)
        for old in self.dir.glob("hnsw-*.npz"):
            if old.name != self._hnsw_path(gen + 1).name:
                old.unlink(missing_ok=True)
        return graph


def _is_builtin_encoder(model_dir: str | Path) -> bool:
    from llmlab.core.assets import minilm_dir

    try:
        return Path(model_dir).resolve() == minilm_dir().resolve()
    except LLMLabError:  # MiniLM not installed: whatever this is, it is not it
        return False


def store_embedder(store: Store, **kwargs) -> Embedder:
    """The Embedder whose vectors the store holds: its own encoder (meta "encoder") when it has
    one, else the built-in MiniLM. kwargs go to Embedder (device, batch_size, ...)."""
    name = store.meta.get("encoder")
    if not name:
        return Embedder(**kwargs)
    path = store.dir / name
    if not (path / "model.safetensors").is_file():
        raise LLMLabError(f"{store.dir} is embedded with the encoder in {path}, which is missing: restore that "
                          f"directory, or re-index into a new --store directory")
    return Embedder(path, **kwargs)


class Retriever:
    """In-memory view of a store for searching: chunk rows, exact index, HNSW graph, BM25."""

    def __init__(self, store: Store, embedder=None, stemming: bool = True, stopwords: bool = False):
        self.store = store
        self.embedder = embedder
        if embedder is not None:
            store.check_model(embedder.model_id)
        rows = store.db.execute('SELECT c.id, d.path, d.title, c.text, c.start, c."end", c.window, c.section '
                                'FROM chunks c JOIN documents d ON d.id = c.doc_id ORDER BY c.id').fetchall()
        if not rows:
            raise LLMLabError(f"{store.dir} holds no chunks yet: add documents with `llmlab rag index <docs> --store {store.dir}`")
        self.chunks = [dict(id=r[0], source=r[1], title=r[2], text=r[3], start=r[4], end=r[5], window=r[6],
                            section=r[7] or "") for r in rows]
        self.row_of = {c["id"]: i for i, c in enumerate(self.chunks)}
        ids, vecs = store.chunk_vectors()
        if len(ids) != len(self.chunks):
            raise LLMLabError(f"{store.dir}: {len(self.chunks) - len(ids)} chunks have no vector; re-run `llmlab rag index`")
        self.exact = ExactIndex(vecs)
        self._graph: HNSW | None = None
        self.bm25 = BM25(stemming=stemming, stopwords=stopwords).fit([c["text"] for c in self.chunks])

    @property
    def graph(self) -> HNSW:
        if self._graph is None:
            self._graph = self.store.load_hnsw()
        return self._graph

    def _dense(self, query_vec: np.ndarray, n: int, ann: bool, ef: int) -> list[tuple[int, float]]:
        if ann:
            labels, sims = self.graph.search(query_vec, n, max(ef, n))
            return [(self.row_of[int(l)], float(s)) for l, s in zip(labels, sims)]
        idx, sims = self.exact.search(query_vec, n)
        return list(zip(idx.tolist(), sims.tolist()))

    def search(self, query: str, k: int = 5, mode: str = "hybrid", ann: bool = False, ef: int = 128,
               fusion: str = "weighted", alpha: float = 0.5, candidates: int = 100, where: str | None = None,
               query_vec: np.ndarray | None = None) -> list[dict]:
        """Top-k chunks as dicts (id, source, title, text, start, end, window, section, score), best first.

        mode: dense | bm25 | hybrid. Hybrid fuses the top `candidates` of each (RRF k=60, or weighted
        with `alpha` on dense). `where` is a glob on the source path (a metadata filter).
        """
        if mode not in ("dense", "bm25", "hybrid"):
            raise LLMLabError(f"unknown search mode {mode!r}: use dense, bm25 or hybrid")
        n = max(candidates, k) if (mode == "hybrid" or where) else k
        if where:
            n = max(n, 10 * k)
        # Weighted fusion normalises each list against the best score that missed it, so fetch
        # one more than is fused (hybrid.weighted_fusion).
        fetch = n + 1 if mode == "hybrid" and fusion != "rrf" else n
        dense = sparse = []
        if mode in ("dense", "hybrid"):
            if query_vec is None:
                if self.embedder is None:
                    raise LLMLabError("dense search needs an embedder")
                query_vec = self.embedder.embed([query])[0]
            dense = self._dense(query_vec, fetch, ann, ef)
        if mode in ("bm25", "hybrid"):
            idx, scores = self.bm25.search(query, fetch)
            sparse = list(zip(idx.tolist(), scores.tolist()))
        if mode == "dense":
            ranked = dense
        elif mode == "bm25":
            ranked = sparse
        elif fusion == "rrf":
            ranked = reciprocal_rank_fusion([[i for i, _ in dense], [i for i, _ in sparse]])
        else:
            ranked = weighted_fusion(dense, sparse, alpha, candidates=n)
        hits = []
        for row, score in ranked:
            chunk = self.chunks[row]
            if where and not fnmatch.fnmatch(chunk["source"], where):
                continue
            hits.append({**chunk, "score": float(score)})
            if len(hits) == k:
                break
        return hits
