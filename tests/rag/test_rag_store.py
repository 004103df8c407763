"""The store: incremental re-index by hash, deletions, reopen without re-embedding, refusals."""

import json
import sqlite3

import pytest

from llmlab.cli import main
from llmlab.core.errors import LLMLabError
from llmlab.rag.embed import Embedder
from llmlab.rag.hnsw import HNSW
from llmlab.rag.ingest import iter_files, read_document
from llmlab.rag.store import Retriever, Store


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
