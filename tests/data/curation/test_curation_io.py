"""Readers (HTML, WARC, Parquet, text) and the tokenize step into the trainer's format, via the CLI."""

from __future__ import annotations

import gzip
import io
import json

import numpy as np
import pytest

from llmlab.cli import main as llmlab
from llmlab.data.curation.tokenize import is_val
from llmlab.data.curation.readers import InputErrors, html_to_text, list_inputs, read_file

ARTICLE = ("The river rises in the hills above the town and flows for many miles through the farms "
           "and the woods before it reaches the sea.")
PAGE = (f"<html><head><title>t</title><script>var x = 1;</script></head><body><nav>Home | About</nav>"
        f"<article><h1>The River</h1><p>{ARTICLE}</p></article><footer>Copyright 2024</footer></body></html>")


def test_html_main_text_drops_navigation_and_scripts():
    text = html_to_text(PAGE)
    assert ARTICLE in text and "var x" not in text and "Home | About" not in text


def test_warc_and_truncated_warc(tmp_path):
    warcio = pytest.importorskip("warcio")
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    for i in range(3):
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.0")
        writer.write_record(writer.create_warc_record(f"http://example.com/{i}", "response",
                                                      payload=io.BytesIO(PAGE.encode()), http_headers=headers))
    (tmp_path / "ok.warc.gz").write_bytes(buf.getvalue())
    (tmp_path / "cut.warc.gz").write_bytes(buf.getvalue()[:-20])  # inside the last record's gzip member
    errors = InputErrors()
    docs = list(read_file(tmp_path / "ok.warc.gz", errors))
    assert [d["source"] for d in docs] == [f"http://example.com/{i}" for i in range(3)]
    assert all(ARTICLE in d["text"] for d in docs) and not errors.counts
    cut = list(read_file(tmp_path / "cut.warc.gz", errors))
    assert len(cut) <= 3 and errors.counts == {"truncated_file": 1}
    assert warcio is not None


def test_parquet_and_text_files(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"id": ["a", "b"], "body": [ARTICLE, None]}), tmp_path / "x.parquet")
    (tmp_path / "notes.md").write_text("# Notes\n\n" + ARTICLE)
    errors = InputErrors()
    docs = [d for p in list_inputs([tmp_path]) for d in read_file(p, errors, text_field="body")]
    assert [d["id"] for d in docs] == [str(tmp_path / "notes.md"), "a"]
    assert errors.counts == {"missing_text_field": 1}


@pytest.mark.slow
def test_cli_run_report_tokenize_then_dataset_opens(curation_corpus, tmp_path, capsys):
    from llmlab.data.tokens import TokenDataset
    from llmlab.tokenizer import CharTokenizer, load_tokenizer

    root, groups = curation_corpus
    clean, shards = tmp_path / "clean", tmp_path / "shards"
    assert llmlab(["data", "run", "--recipe", "prose", "--input", str(root / "raw"), "--out", str(clean), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["docs_out"] > 100
    assert llmlab(["data", "report", str(clean)]) == 0
    assert (clean / "report.md").is_file() and "| minhash |" in capsys.readouterr().out
    docs = [json.loads(line) for p in sorted(clean.glob("part-*.jsonl.gz")) for line in gzip.open(p, "rt")]
    texts = [d["text"] for d in docs]
    tok = CharTokenizer.train("".join(texts))
    tok.save(tmp_path / "tok")
    assert load_tokenizer(tmp_path / "tok").eos_id is None  # -> "\n\n" between documents
    assert llmlab(["data", "tokenize", str(clean), "--tokenizer", str(tmp_path / "tok"), "--out", str(shards),
                   "--workers", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    ds = TokenDataset.open(shards)
    sep = tok.encode("\n\n")
    total = sum(len(tok.encode(t)) + len(sep) for t in texts)
    assert ds.num_tokens("train") + ds.num_tokens("val") == total == sum(summary["tokens"].values())
    assert summary["documents"]["val"] > 0 and summary["separator"] == "\n\n"
    # the train split is exactly its documents, in order, each followed by the separator
    train_text = "".join(d["text"] + "\n\n" for d in docs if not is_val(d["id"], 0.05))
    assert tok.decode(np.concatenate(ds.shards["train"]).tolist()) == train_text
    # bad input to the CLI: a clear error, exit status 2
    assert llmlab(["data", "report", str(tmp_path / "missing")]) == 2
    assert "llmlab data run" in capsys.readouterr().err
