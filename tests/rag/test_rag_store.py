"""The store: incremental re-index by hash, deletions, reopen without re-embedding, refusals."""

import json
import sqlite3

import numpy as np
import pytest

from llmlab.cli import main
from llmlab.core.errors import LLMLabError
from llmlab.rag.embed import Embedder
from llmlab.rag.hnsw import HNSW
from llmlab.rag.ingest import iter_files, read_document
from llmlab.rag.store import Retriever, Store, store_embedder


class CountingEmbedder(Embedder):
    """The real embedder, counting how many texts it actually had to encode."""

    def __init__(self):
        super().__init__()
        self.encoded = 0

    def embed(self, texts, show_progress=False):
        self.encoded += len(texts)
        return super().embed(texts, show_progress)


@pytest.fixture(scope="module")
def embedder():
    return CountingEmbedder()


def write_docs(root):
    (root / "ctx.md").write_text("# Context managers\n\nThe with statement calls __enter__ and __exit__.\n\n"
                                 "contextlib.contextmanager turns a generator into a context manager.\n")
    (root / "cats.html").write_text("<html><head><title>Cats</title><script>var hidden = 1;</script></head><body>"
                                    "<nav>Home | Menu</nav><p>Cats sleep up to sixteen hours a day.</p></body></html>")
    (root / "loops.txt").write_text("A for loop iterates over the items of any sequence, such as a list or a string.")


def index(store_dir, root, emb):
    store = Store(store_dir, create=True)
    docs = [read_document(f.resolve()) for f in iter_files([root])]
    stats = store.index(docs, emb, [str(root.resolve()) + "/"])
    store.close()
    return stats


def test_incremental_index_and_delete(tmp_path, embedder):
    root = tmp_path / "docs"
    root.mkdir()
    write_docs(root)
    first = index(tmp_path / "kb", root, embedder)
    assert (first["added"], first["documents"]) == (3, 3)
    before = embedder.encoded
    again = index(tmp_path / "kb", root, embedder)
    assert (again["unchanged"], again["embedded"]) == (3, 0) and embedder.encoded == before
    (root / "loops.txt").write_text("A while loop repeats as long as its condition is true.")
    (root / "cats.html").unlink()
    third = index(tmp_path / "kb", root, embedder)
    assert (third["updated"], third["deleted"], third["unchanged"], third["documents"]) == (1, 1, 1, 2)
    r = Retriever(Store(tmp_path / "kb"), embedder)
    sources = {c["source"] for c in r.chunks}
    assert not any(s.endswith("cats.html") for s in sources)
    assert r.search("while loop condition", 1, "bm25")[0]["source"].endswith("loops.txt")
    # the HNSW graph was updated by tombstones/inserts and agrees with exact search
    assert len(r.graph) == len(r.chunks)
    hit_ann = r.search("what does the with statement call on a context manager", 1, "dense", ann=True)[0]
    hit_exact = r.search("what does the with statement call on a context manager", 1, "dense")[0]
    assert hit_ann["id"] == hit_exact["id"] and hit_exact["source"].endswith("ctx.md")


def test_html_main_text_only(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    write_docs(root)
    doc = read_document(root / "cats.html")
    assert doc.title == "Cats" and "sixteen hours" in doc.text
    assert "hidden" not in doc.text and "Menu" not in doc.text


def test_reopen_without_reembedding_and_hybrid(tmp_path, embedder):
    root = tmp_path / "docs"
    root.mkdir()
    write_docs(root)
    index(tmp_path / "kb", root, embedder)
    before = embedder.encoded
    r = Retriever(Store(tmp_path / "kb"), embedder)
    q = embedder.embed(["how do I write a context manager"])[0]
    assert embedder.encoded == before + 1  # only the query was embedded
    for mode in ("dense", "bm25", "hybrid"):
        hits = r.search("how do I write a context manager", 2, mode, query_vec=q)
        assert hits[0]["source"].endswith("ctx.md"), mode
    weighted = r.search("context manager", 3, "hybrid", fusion="weighted", query_vec=q)
    assert weighted[0]["source"].endswith("ctx.md")
    only_txt = r.search("context manager", 3, "hybrid", where="*.txt", query_vec=q)
    assert only_txt and all(h["source"].endswith(".txt") for h in only_txt)


def test_missing_graph_file_is_rebuilt(tmp_path, embedder):
    root = tmp_path / "docs"
    root.mkdir()
    write_docs(root)
    index(tmp_path / "kb", root, embedder)
    for f in (tmp_path / "kb").glob("hnsw-*.npz"):
        f.unlink()
    r = Retriever(Store(tmp_path / "kb"), embedder)
    assert len(r.graph) == len(r.chunks)


def test_interrupted_graph_build_is_detected_and_rebuilt(tmp_path, embedder, monkeypatch, capsys):
    # Ctrl-C during the graph build of a re-index: the SQLite transaction has committed the new
    # chunks, the graph file on disk is the previous generation. Opening the store must notice
    # (chunk version / label check) and rebuild instead of searching a graph with dead labels.
    root = tmp_path / "docs"
    root.mkdir()
    write_docs(root)
    index(tmp_path / "kb", root, embedder)
    (root / "loops.txt").write_text("A while loop repeats as long as its condition is true.")
    (root / "cats.html").unlink()

    def ctrl_c(self, vector, label):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(HNSW, "_insert", ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            index(tmp_path / "kb", root, embedder)
    capsys.readouterr()
    assert main(["rag", "search", str(tmp_path / "kb"), "while loop condition", "-k", "3", "--mode", "dense",
                 "--ann", "--json"]) == 0
    out = capsys.readouterr()
    assert "stale" in out.err
    hits = json.loads(out.out)
    assert hits[0]["source"].endswith("loops.txt") and not any(h["source"].endswith("cats.html") for h in hits)
    r = Retriever(Store(tmp_path / "kb"), embedder)  # the rebuilt graph was saved: no second rebuild
    ann = r.search("while loop condition", 3, "dense", ann=True)
    assert "stale" not in capsys.readouterr().err
    assert [h["id"] for h in ann] == [h["id"] for h in r.search("while loop condition", 3, "dense")]


def test_hybrid_gives_a_lone_bm25_hit_its_full_weight(tmp_path, embedder):
    root = tmp_path / "docs"
    root.mkdir()
    write_docs(root)
    index(tmp_path / "kb", root, embedder)
    r = Retriever(Store(tmp_path / "kb"), embedder)
    hits = r.search("sixteen", 3, "hybrid", alpha=0.2)  # the only chunk with the word
    assert hits[0]["source"].endswith("cats.html") and hits[0]["score"] >= 0.8


def test_refuses_other_model_and_format(tmp_path, embedder):
    root = tmp_path / "docs"
    root.mkdir()
    write_docs(root)
    index(tmp_path / "kb", root, embedder)
    with pytest.raises(LLMLabError, match="not a RAG store"):
        Store(tmp_path / "nowhere")
    db = sqlite3.connect(str(tmp_path / "kb" / "store.sqlite"))
    with db:
        db.execute("UPDATE meta SET value = 'other-model@128' WHERE key = 'embed_model'")
    db.close()
    with pytest.raises(LLMLabError, match="other-model"):
        Retriever(Store(tmp_path / "kb"), embedder)
    db = sqlite3.connect(str(tmp_path / "kb" / "store.sqlite"))
    with db:
        db.execute("UPDATE meta SET value = '0' WHERE key = 'format_version'")
    db.close()
    with pytest.raises(LLMLabError, match="format 0"):
        Store(tmp_path / "kb")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "store.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(LLMLabError, match="not a readable SQLite"):
        Store(tmp_path / "junk")


def test_pdf_ingestion(tmp_path):
    pypdf = pytest.importorskip("pypdf")
    writer = pypdf.PdfWriter()
    writer.add_blank_page(200, 200)
    writer.add_metadata({"/Title": "Blank"})
    with open(tmp_path / "b.pdf", "wb") as f:
        writer.write(f)
    assert read_document(tmp_path / "b.pdf").title == "Blank"
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-garbage")
    with pytest.raises(LLMLabError, match="bad.pdf"):
        read_document(tmp_path / "bad.pdf")


# ---- structure chunks, resumable embedding, the store's own encoder ------------------------

class Interrupting:
    """Delegates to an embedder, raising KeyboardInterrupt (Ctrl-C) once more than `after` texts
    were asked for; counts the texts it passed on."""

    def __init__(self, inner, after=10**9):
        self.inner, self.after, self.encoded = inner, after, 0
        self.model_id, self.count_tokens = inner.model_id, inner.count_tokens

    def embed(self, texts, show_progress=False):
        if self.encoded + len(texts) > self.after:
            raise KeyboardInterrupt
        self.encoded += len(texts)
        return self.inner.embed(texts)


def write_sections(root, n_sections=3, tag="v1"):
    for name in ("alpha", "beta", "gamma"):
        parts = [f"# {name.title()} guide\n"]
        for s in range(n_sections):
            parts.append(f"## Part {s}\n\nThe {name} part {s} ({tag}) explains step {s} of the {name} setup in detail.\n")
        (root / f"{name}.md").write_text("\n".join(parts))


def structure_index(store_dir, root, emb, parent_tokens=400):
    store = Store(store_dir, create=True)
    docs = [read_document(f.resolve()) for f in iter_files([root])]
    stats = store.index(docs, emb, [str(root.resolve()) + "/"], "structure", 40, 0, parent_tokens)
    store.close()
    return stats


def consistent(store_dir, emb=None):
    """Every chunk has its vector, no vector is orphaned, the graph holds exactly the chunks."""
    store = Store(store_dir)
    hashes = {r[0] for r in store.db.execute("SELECT hash FROM chunks")}
    vecs = {r[0] for r in store.db.execute("SELECT hash FROM embeddings")}
    r = Retriever(store, emb)
    assert hashes == vecs and len(r.graph) == len(r.chunks)
    return r


def test_structure_reindex_touches_only_the_edited_file(tmp_path, embedder, capsys):
    root = tmp_path / "docs"
    root.mkdir()
    write_sections(root)
    kb = str(tmp_path / "kb")
    assert main(["rag", "index", str(root), "--store", kb, "--chunking", "structure", "--chunk-size", "40", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["added"], first["chunks"]) == (3, 9)  # one chunk per "## Part" section
    old = {r[0] for r in Store(kb).db.execute("SELECT hash FROM chunks")}
    text = (root / "beta.md").read_text().replace("part 1 (v1)", "part 1 (v2)")
    (root / "beta.md").write_text(text)
    assert main(["rag", "index", str(root), "--store", kb, "--chunking", "structure", "--chunk-size", "40", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert (second["updated"], second["unchanged"], second["embedded"]) == (1, 2, 1)  # only Part 1 of beta changed
    assert len({r[0] for r in Store(kb).db.execute("SELECT hash FROM chunks")} - old) == 1
    assert main(["rag", "search", kb, "beta part 1 v2", "-k", "1", "--json"]) == 0
    hit = json.loads(capsys.readouterr().out)[0]
    assert hit["section"] == "Beta guide > Part 1" and hit["text"].startswith("Beta guide > Part 1\n")
    # parent_tokens is part of the chunking parameters: changing it re-chunks every document
    assert main(["rag", "index", str(root), "--store", kb, "--chunking", "structure", "--chunk-size", "40",
                 "--parent-tokens", "10", "--json"]) == 0
    third = json.loads(capsys.readouterr().out)
    assert (third["updated"], third["embedded"]) == (3, 0)  # same chunk texts, new windows: no re-embedding
    r = consistent(kb)
    assert all(c["window"] == c["text"] for c in r.chunks)  # a 10-token parent cannot hold more than the chunk


def two_section_store(tmp_path, embedder, monkeypatch):
    """docs/ with two sectioned files, indexed into kb/ with embedding batches of two (so an
    interruption can fall between batches). Returns (docs, kb)."""
    monkeypatch.setattr(Store, "embed_batch", 2)
    root = tmp_path / "docs"
    root.mkdir()
    write_sections(root, 2)
    kb = tmp_path / "kb"
    structure_index(kb, root, embedder)
    return root, kb


def test_interrupted_embedding_keeps_the_old_state_and_resumes(tmp_path, embedder, monkeypatch):
    root, kb = two_section_store(tmp_path, embedder, monkeypatch)
    before = Store(kb).db.execute("SELECT id, text FROM chunks ORDER BY id").fetchall()
    write_sections(root, 4, tag="v2")  # every chunk text changes: 12 new texts
    stop = Interrupting(embedder, after=5)  # Ctrl-C during the third batch of two
    with pytest.raises(KeyboardInterrupt):
        structure_index(kb, root, stop)
    store = Store(kb)
    assert store.db.execute("SELECT id, text FROM chunks ORDER BY id").fetchall() == before  # the previous state
    assert store.db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == len(before) + 4  # + 2 batches
    r = Retriever(store, embedder)
    assert "(v1)" in r.search("alpha part 1 setup", 1, "hybrid")[0]["text"]
    again = Interrupting(embedder)
    stats = structure_index(kb, root, again)
    assert stats["embedded"] == again.encoded == 12 - 4 and stats["chunks"] == 12
    r = consistent(kb, embedder)
    assert "(v2)" in r.search("alpha part 3 setup", 1, "dense")[0]["text"]
    assert structure_index(kb, root, Interrupting(embedder, after=0))["embedded"] == 0  # nothing left to do


def adapted_encoder(path):
    """A copy of MiniLM with slightly perturbed weights: an 'adapted' encoder, different vectors."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from llmlab.core.assets import minilm_dir

    path.mkdir(parents=True)
    for f in ("config.json", "vocab.txt"):
        shutil.copy(minilm_dir() / f, path / f)
    weights = load_file(str(minilm_dir() / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    w = weights["embeddings.word_embeddings.weight"]
    weights["embeddings.word_embeddings.weight"] = w + 0.02 * torch.randn(w.shape, generator=g)
    save_file(weights, str(path / "model.safetensors"))
    return path


def test_reembed_with_the_stores_encoder_resumes_and_switches(tmp_path, embedder, monkeypatch):
    root, kb = two_section_store(tmp_path, embedder, monkeypatch)
    assert store_embedder(Store(kb)).model_id == embedder.model_id  # no encoder: the built-in MiniLM
    tuned = Embedder(adapted_encoder(kb / "encoder"))
    assert tuned.model_id != embedder.model_id
    with pytest.raises(KeyboardInterrupt):
        Store(kb).reembed(Interrupting(tuned, after=3))
    store = Store(kb)
    assert store.meta["embed_model"] == embedder.model_id and "encoder" not in store.meta  # still the old vectors
    Retriever(store, embedder)
    resumed = Interrupting(tuned)
    resumed.model_dir = tuned.model_dir
    assert Store(kb).reembed(resumed) == resumed.encoded == 6 - 2  # the two staged vectors are kept
    store = Store(kb)
    assert store.meta["encoder"] == "encoder" and store.meta["embed_model"] == tuned.model_id
    own = store_embedder(store)
    assert own.model_id == tuned.model_id
    r = consistent(kb)
    texts = [c["text"] for c in r.chunks]
    assert np.allclose(store.chunk_vectors()[1], tuned.embed(texts), atol=1e-5)
    r = Retriever(store, own)
    q = "gamma part 1 setup"
    assert [h["id"] for h in r.search(q, 3, "dense", ann=True)] == [h["id"] for h in r.search(q, 3, "dense")]
    with pytest.raises(LLMLabError, match="not comparable"):
        Retriever(store, embedder)  # base-model queries against adapted vectors
    with pytest.raises(LLMLabError, match="not an encoder directory"):
        store.set_encoder("nowhere")
    (kb / "encoder" / "model.safetensors").unlink()
    with pytest.raises(LLMLabError, match="missing"):
        store_embedder(Store(kb))


def test_old_store_gains_the_section_column(tmp_path, embedder):
    root = tmp_path / "docs"
    root.mkdir()
    write_docs(root)
    index(tmp_path / "kb", root, embedder)
    db = sqlite3.connect(str(tmp_path / "kb" / "store.sqlite"))
    with db:
        db.execute("ALTER TABLE chunks DROP COLUMN section")  # as a store written before this column
    db.close()
    r = Retriever(Store(tmp_path / "kb"), embedder)
    assert r.search("while loop", 1, "bm25")[0]["section"] == ""
