"""Output formats of `llmlab data run` (JSONL, Parquet) and `llmlab data tokenize` over them, with resume."""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

import pytest

from llmlab.core.errors import LLMLabError
from llmlab.data.curation.executor import run_pipeline
from llmlab.data.curation.pipeline import recipe_config
from llmlab.data.curation.tokenize import tokenize_curated

pq = pytest.importorskip("pyarrow.parquet")


def _jsonl_docs(out: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(out.glob("part-*.jsonl.gz")) for line in gzip.open(p, "rt", encoding="utf-8")]


def _parquet_docs(out: Path) -> list[dict]:
    return [row for p in sorted(out.glob("part-*.parquet")) for row in pq.read_table(p).to_pylist()]


def _mtimes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def runs(curation_corpus, tmp_path_factory):
    root, _ = curation_corpus
    outs = {}
    for fmt in ("jsonl", "parquet"):
        cfg = recipe_config("web-basic", [str(root / "raw")], str(tmp_path_factory.mktemp(f"clean-{fmt}")))
        cfg.output.format = fmt
        outs[fmt] = (Path(cfg.output.dir), run_pipeline(cfg), cfg)
    return outs


@pytest.fixture(scope="module")
def char_tokenizer(runs):
    from llmlab.tokenizer import CharTokenizer
    return CharTokenizer.train("".join(d["text"] for d in _jsonl_docs(runs["jsonl"][0])))


def test_parquet_output_holds_the_same_documents(runs):
    (jout, jstats, _), (pout, pstats, _) = runs["jsonl"], runs["parquet"]
    assert not list(pout.glob("part-*.jsonl*")) and len(list(pout.glob("part-*.parquet"))) == pstats["shards"]
    jdocs, pdocs = _jsonl_docs(jout), _parquet_docs(pout)
    assert len(pdocs) == pstats["docs_out"] == jstats["docs_out"] > 50
    key = lambda d: (d["id"], d["text"], d["source"])  # noqa: E731
    assert [key(d) for d in pdocs] == [key(d) for d in jdocs]
    # the other fields the documents carry become columns too (langid: language, language_score)
    assert pdocs[0]["language"] == jdocs[0]["language"] and pdocs[0]["language_score"] == jdocs[0]["language_score"]
    first = pq.ParquetFile(sorted(pout.glob("part-*.parquet"))[0])
    assert first.schema_arrow.names[:3] == ["id", "text", "source"]
    assert first.metadata.row_group(0).column(1).compression == "ZSTD"
    # removals are logged the same way whatever the format; no temporary file is left behind
    removed = lambda out: [p.read_text() for p in sorted((out / "removed").glob("part-*.jsonl"))]  # noqa: E731
    assert removed(pout) == removed(jout)
    assert not list(pout.glob(".*tmp*"))


def test_parquet_run_resumes_without_rewriting(runs):
    pout, _, cfg = runs["parquet"]
    before = _mtimes(pout)
    run_pipeline(cfg)
    assert {k: v for k, v in _mtimes(pout).items() if k.startswith("part-")} == \
        {k: v for k, v in before.items() if k.startswith("part-")}


def test_parquet_without_pyarrow_says_how_to_install(runs, tmp_path, monkeypatch):
    from llmlab.data.curation.executor import write_shard
    pout, _, _ = runs["parquet"]
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(LLMLabError, match=r"pip install 'llmlab\[curation\]'"):
        write_shard(0, str(pout / "work"), str(tmp_path), "gzip", {}, "parquet")
    assert not list(tmp_path.glob("part-*"))


def test_tokenize_parquet_equals_jsonl(runs, char_tokenizer, tmp_path):
    from llmlab.data.tokens import TokenDataset
    a = tokenize_curated(runs["jsonl"][0], char_tokenizer, tmp_path / "from-jsonl", shard_tokens=20_000)
    b = tokenize_curated(runs["parquet"][0], char_tokenizer, tmp_path / "from-parquet", shard_tokens=20_000)
    assert a["documents"] == b["documents"] and a["tokens"] == b["tokens"] and not b["already_done"]
    bins = lambda d: {p.name: p.read_bytes() for p in sorted(d.glob("*.bin"))}  # noqa: E731
    assert len(bins(tmp_path / "from-parquet")) > 2 and bins(tmp_path / "from-parquet") == bins(tmp_path / "from-jsonl")
    ma, mb = (json.loads((tmp_path / d / "meta.json").read_text()) for d in ("from-jsonl", "from-parquet"))
    assert ma["splits"] == mb["splits"]
    ds = TokenDataset.open(tmp_path / "from-parquet")
    assert ds.num_tokens("train") + ds.num_tokens("val") == sum(b["tokens"].values())


def test_second_tokenize_is_a_no_op(runs, char_tokenizer, tmp_path, capsys):
    out = tmp_path / "tokens"
    first = tokenize_curated(runs["parquet"][0], char_tokenizer, out, shard_tokens=20_000)
    before = _mtimes(out)
    capsys.readouterr()
    again = tokenize_curated(runs["parquet"][0], char_tokenizer, out, shard_tokens=20_000)
    assert again["already_done"] and "already holds this tokenization" in capsys.readouterr().err
    assert _mtimes(out) == before
    assert {k: again[k] for k in ("documents", "tokens", "separator")} == \
        {k: first[k] for k in ("documents", "tokens", "separator")}
    # the same directory for another tokenizer (or input) is refused rather than mixed or overwritten
    from llmlab.tokenizer import CharTokenizer
    with pytest.raises(LLMLabError, match="new --out"):
        tokenize_curated(runs["parquet"][0], CharTokenizer.train("abc \n"), out)
    assert _mtimes(out) == before


def test_unfinished_tokenize_is_redone(runs, char_tokenizer, tmp_path, capsys):
    reference = tmp_path / "reference"
    tokenize_curated(runs["jsonl"][0], char_tokenizer, reference, shard_tokens=20_000)
    # an interrupted run: some shards written, meta.json never written, a stray shard from further on
    out = tmp_path / "tokens"
    shutil.copytree(reference, out)
    (out / "meta.json").unlink()
    (out / "train-00001.bin").write_bytes(b"\x00\x01" * 7)
    (out / "train-00099.bin").write_bytes(b"\x00\x01" * 3)
    capsys.readouterr()
    result = tokenize_curated(runs["jsonl"][0], char_tokenizer, out, shard_tokens=20_000)
    assert not result["already_done"] and "unfinished" in capsys.readouterr().err
    assert (out / "meta.json").read_text() == (reference / "meta.json").read_text()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert all((out / p.name).read_bytes() == p.read_bytes() for p in reference.glob("*.bin"))
    # a complete meta.json whose shard went missing is not "done" either
    (out / "val-00000.bin").unlink()
    result = tokenize_curated(runs["jsonl"][0], char_tokenizer, out, shard_tokens=20_000)
    assert not result["already_done"] and (out / "val-00000.bin").read_bytes() == (reference / "val-00000.bin").read_bytes()
