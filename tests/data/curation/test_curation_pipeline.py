"""The whole pipeline on the test corpus: who survives and why, bad input, resume, determinism."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from llmlab.data.curation.executor import run_pipeline
from llmlab.data.curation.pipeline import load_config, recipe_config
from llmlab.data.curation.report import write_report


def _kept(out: Path) -> dict[str, dict]:
    return {d["id"]: d for p in sorted(out.glob("part-*.jsonl.gz"))
            for d in map(json.loads, gzip.open(p, "rt", encoding="utf-8"))}


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*"))}


@pytest.fixture(scope="module")
def curated(curation_corpus, tmp_path_factory):
    root, groups = curation_corpus
    out = tmp_path_factory.mktemp("clean")
    stats = run_pipeline(recipe_config("web-basic", [str(root / "raw")], str(out)))
    return out, stats, groups


def test_planted_documents_removed_for_the_right_reason(curated):
    out, stats, groups = curated
    kept = _kept(out)
    log = [json.loads(line) for p in sorted((out / "removed").glob("part-*.jsonl")) for line in p.open()]
    why = {r["id"]: (r["reason"], r.get("duplicate_of")) for r in log}
    # every document read is either kept or logged as removed with its reason, never both
    assert len(kept) + len(log) == stats["docs_in"] and not set(kept) & set(why)
    # exact copies (re-cased, re-spaced) -> the original survives
    for pid in groups["exact"]:
        assert pid not in kept and why[pid] == ("exact_duplicate", pid.split("exact-of-")[1])
    # near copies with 1-2 edited words in 200 (5-gram Jaccard >= 0.9) -> removed as near duplicates
    for pid in groups["near_caught"]:
        assert pid not in kept and why[pid] == ("near_duplicate", pid.split("-of-")[1])
    # 15% and 30% edited copies are different documents -> kept
    for pid in groups["near_kept"]:
        assert pid in kept
    # boilerplate lines are cut (C4), after which the page is an exact copy of its source
    assert why["boilerplate-play-030"] == ("exact_duplicate", "play-030")
    examples = {r for st in stats["stages"].values() for r in st["examples"]}
    removed = {r for st in stats["stages"].values() for r in st["removed"]}
    for spam_id, reason in [("spam-lorem", "c4:lorem_ipsum"), ("spam-bullets", "gopher:bullet_lines"),
                            ("spam-short", "gopher:too_few_words"), ("spam-ellipsis", "gopher:ellipsis_lines"),
                            ("french", "langid:not_en")]:
        assert why[spam_id] == (reason, None) and reason in removed and reason in examples
    assert "spam-repeat" not in kept and "spam-symbols" not in kept
    # PII replaced, document kept
    assert "<EMAIL>" in kept["pii"]["text"] and "<PHONE>" in kept["pii"]["text"] and "<IP_ADDRESS>" in kept["pii"]["text"]
    assert "jane.doe@example.org" not in kept["pii"]["text"]
    # clean prose: every Shakespeare document survives; most Python doc pages do (code-heavy ones
    # trip Gopher's symbol/duplicate-n-gram rules, which is what those rules are for)
    assert all(pid in kept for pid in groups["clean_plays"])
    assert sum(pid in kept for pid in groups["pydocs"]) >= 0.6 * len(groups["pydocs"])
    assert all(set(d) >= {"id", "text", "source"} for d in kept.values())


def test_bad_input_is_counted_not_fatal(curated):
    _, stats, _ = curated
    assert stats["input_errors"]["counts"] == {"bad_encoding": 1, "malformed_json": 1, "truncated_file": 1}
    # the stage counts chain: each stage's input is the previous stage's output
    stages = list(stats["stages"].values())
    assert all(a["docs_out"] == b["docs_in"] for a, b in zip(stages, stages[1:]))
    assert stages[-1]["docs_out"] == stats["docs_out"]


def test_resume_after_interruption_and_parallel_determinism(curated, curation_corpus, tmp_path):
    out, _, _ = curated
    root, _ = curation_corpus
    reference = _outputs(out)
    # simulate a crash: one shard's filter result and two outputs never finished
    copy = tmp_path / "clean"
    shutil.copytree(out, copy)
    (copy / "work" / "shard-00002.stats.json").unlink()
    (copy / "work" / "dedup.stats.json").unlink()
    for name in list(reference)[:2]:
        (copy / name).unlink()
    cfg = recipe_config("web-basic", [str(root / "raw")], str(copy))
    stats = run_pipeline(cfg)
    assert _outputs(copy) == reference and stats["docs_out"] == len(_kept(out))
    # two worker processes from scratch: byte-identical output
    cfg2 = recipe_config("web-basic", [str(root / "raw")], str(tmp_path / "parallel"))
    cfg2.execution.workers = 2
    run_pipeline(cfg2)
    assert _outputs(tmp_path / "parallel") == reference


def test_changed_config_refuses_to_mix(curated, curation_corpus):
    from llmlab.core.errors import LLMLabError
    out, _, _ = curated
    root, _ = curation_corpus
    cfg = recipe_config("dedup-only", [str(root / "raw")], str(out))
    with pytest.raises(LLMLabError, match="different config"):
        run_pipeline(cfg)


def test_changed_input_content_refuses_to_resume(tmp_path):
    # Same file name, new content: the finished shard in work/ holds the old file's documents,
    # so resuming would publish stale output. The fingerprint covers content, not only names.
    from llmlab.core.errors import LLMLabError
    raw = tmp_path / "raw"
    raw.mkdir()
    doc = lambda i, text: json.dumps({"id": f"d{i}", "text": text}) + "\n"  # noqa: E731
    (raw / "a.jsonl").write_text(doc(0, "the first version of this document") + doc(1, "another one"))
    cfg = recipe_config("dedup-only", [str(raw)], str(tmp_path / "out"))
    assert run_pipeline(cfg)["docs_out"] == 2
    assert run_pipeline(cfg)["docs_out"] == 2  # unchanged input: resumes
    (raw / "a.jsonl").write_text(doc(0, "the second version of this document") + doc(1, "another one"))
    with pytest.raises(LLMLabError, match="content"):
        run_pipeline(cfg)


def test_toml_config_and_errors(tmp_path, curation_corpus):
    from llmlab.core.errors import LLMLabError
    root, _ = curation_corpus
    (tmp_path / "p.toml").write_text(f'[input]\npaths = ["{root / "raw"}"]\n[output]\ndir = "out"\n'
                                     '[minhash]\nbands = 16\nrows = 8\n[langid]\nthreshold = 0.7\n')
    cfg = load_config(tmp_path / "p.toml")
    assert cfg.minhash.bands == 16 and cfg.langid.threshold == 0.7 and cfg.output.dir == str(tmp_path / "out")
    (tmp_path / "bad.toml").write_text("[minhash]\nband = 3\n")
    with pytest.raises(LLMLabError, match="valid fields"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(LLMLabError, match="unknown recipe"):
        recipe_config("nope", [], "x")


def test_report_markdown_and_png(curated):
    out, stats, _ = curated
    result = write_report(out)
    text = Path(result["report"]).read_text()
    assert "| minhash |" in text and "near_duplicate" in text and "malformed_json: 1" in text
    assert all(Path(p).stat().st_size > 1000 and Path(p).read_bytes()[:4] == b"\x89PNG" for p in result["images"])
