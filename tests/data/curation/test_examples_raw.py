"""The chapter-5 example corpus, examples/raw/: the built-in recipes remove what was planted in it
(exact and near duplicates, spam, boilerplate, other languages) and mask its PII, for real.

examples/raw/ holds 31 documents (blog.jsonl, crawl.jsonl, notes/) plus one malformed JSON line;
the ids below are what each was written to be (docs/05-data-curation.md lists them)."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from llmlab.data.curation.executor import run_pipeline
from llmlab.data.curation.pipeline import RECIPES, load_config, recipe_config, recipe_toml

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
RAW = EXAMPLES / "raw"
NOTES = str(RAW / "notes" / "harvest-log.md")
NOTES_COPY = str(RAW / "notes" / "old" / "harvest-log.txt")
# planted copy -> the original that must survive
EXACT = {"c01": "b02",        # word for word
         "c02": "b05",        # upper-cased, commas dropped, spacing changed
         "c14": "b06",        # word for word, PII included
         "b11": "b10",        # the same newsletter to another address: identical once PII is masked
         NOTES_COPY: NOTES}   # the same file under two names, .md and .txt
NEAR = {"b09": "b03",         # one word changed (word-5-gram Jaccard 0.93)
        "c03": "b08"}         # one word changed and a credit line added (0.87)
NOT_DUPLICATES = {"b14", "b15"}   # a rewrite of b01 (Jaccard 0.0) and a heavy edit of it (0.51)
PII = ["jo.hartley@example.org", "(202) 555-0142", "+44 20 7946 0321", "priya.n@example.com",
       "203.0.113.42", "198.51.100.7", "2001:db8:85a3::8a2e:370:7334", "sam.okafor@example.net",
       "l.moreau@example.com"]
WEB_BASIC_REMOVES = {"c04": "gopher:too_few_words", "c05": "gopher:top_2gram", "c06": "gopher:bullet_lines",
                     "c07": "langid:not_en", "c08": "langid:not_en", "c09": "langid:not_en",
                     "c11": "langid:low_confidence", "c12": "gopher:dup_line_fraction",
                     "c13": "gopher:non_alpha_words",
                     "b12": "c4:terminal_punctuation", "b13": "c4:terminal_punctuation"}  # verse, one-line post


def _kept(out: Path) -> dict[str, str]:
    """id -> text of the kept documents, from part-*.jsonl.gz or part-*.jsonl."""
    texts = {}
    for part in sorted(out.glob("part-*.jsonl*")):
        raw = gzip.decompress(part.read_bytes()) if part.suffix == ".gz" else part.read_bytes()
        texts.update((d["id"], d["text"]) for d in map(json.loads, raw.decode("utf-8").splitlines()))
    return texts


def _run(cfg) -> tuple[dict[str, str], dict[str, tuple[str, str | None]], dict]:
    """(kept id -> text, removed id -> (reason, duplicate_of), stats) of one run of `cfg`."""
    stats = run_pipeline(cfg)
    out = Path(cfg.output.dir)
    kept = _kept(out)
    log = [json.loads(line) for p in sorted((out / "removed").glob("part-*.jsonl")) for line in p.open()]
    why = {r["id"]: (r["reason"], r.get("duplicate_of")) for r in log}
    # every document read is kept or logged as removed, never both; the malformed line is counted
    assert len(kept) + len(why) == stats["docs_in"] == 31 and not set(kept) & set(why)
    assert stats["input_errors"]["counts"] == {"malformed_json": 1}
    return kept, why, stats


@pytest.fixture(scope="module")
def web_basic(tmp_path_factory):
    return _run(recipe_config("web-basic", [str(RAW)], str(tmp_path_factory.mktemp("clean"))))


def test_web_basic_removes_the_planted_duplicates_and_keeps_their_originals(web_basic):
    kept, why, _ = web_basic
    for copy, original in EXACT.items():
        assert why.get(copy) == ("exact_duplicate", original) and original in kept
    for copy, original in NEAR.items():
        assert why.get(copy) == ("near_duplicate", original) and original in kept
    assert NOT_DUPLICATES <= set(kept) and "b01" in kept


def test_web_basic_masks_every_planted_pii_string_and_keeps_the_documents(web_basic):
    kept, _, stats = web_basic
    text = "\n".join(kept.values())
    assert [s for s in PII if s in text] == []
    assert re.search(r"at <EMAIL>, or leave a message on <PHONE> before", kept["b04"])
    assert "<PHONE> or write to <EMAIL>" in kept["b06"]
    assert kept["b07"].count("<IP_ADDRESS>") == 3
    assert "sent to <EMAIL>." in kept["b10"]
    assert stats["stages"]["pii"]["details"] == {"email": 5, "ip": 3, "phone": 3}


def test_web_basic_removes_spam_boilerplate_other_languages_and_one_line_posts(web_basic):
    kept, why, stats = web_basic
    assert {i: why.get(i, ("kept",))[0] for i in WEB_BASIC_REMOVES} == WEB_BASIC_REMOVES
    # the cookie banner and the JavaScript notice are cut from c10, which stays
    assert "cookie" not in kept["c10"].lower() and "javascript" not in kept["c10"].lower()
    assert stats["stages"]["c4_lines"]["details"] == {"lines_removed": 2}
    assert len(kept) == 13


def test_prose_keeps_verse_and_one_line_posts_that_web_basic_drops(tmp_path):
    kept, why, _ = _run(recipe_config("prose", [str(RAW)], str(tmp_path / "clean")))
    assert {"b12", "b13"} <= set(kept)
    # no langid: Gopher's English stop-word rule still drops the French, German and Latin pages
    assert {i: why[i][0] for i in ("c07", "c08", "c09")} == dict.fromkeys(("c07", "c08", "c09"), "gopher:stop_words")
    assert {k: why[k] for k in EXACT} == {k: ("exact_duplicate", v) for k, v in EXACT.items()}


def test_the_example_pipeline_toml_runs_and_keeps_verse(tmp_path):
    cfg = load_config(EXAMPLES / "pipeline.toml")
    assert cfg.input.paths == [str(EXAMPLES / "raw/")]
    cfg.output.dir = str(tmp_path / "clean")
    kept, why, _ = _run(cfg)
    assert sorted(p.name for p in (tmp_path / "clean").glob("part-*")) == [f"part-0000{i}.jsonl" for i in range(4)]
    assert {"b12", "b13"} <= set(kept) and len(kept) == 15
    assert {k: why[k] for k in NEAR} == {k: ("near_duplicate", v) for k, v in NEAR.items()}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_printed_recipe_loads_back_to_the_same_config(name, tmp_path):
    path = tmp_path / "pipeline.toml"
    path.write_text(recipe_toml(name, ["raw/"], "clean/"), encoding="utf-8")
    assert load_config(path) == recipe_config(name, [str(tmp_path / "raw")], str(tmp_path / "clean"))


def test_llmlab_data_recipe_prints_a_config_that_runs(tmp_path, capsys):
    from llmlab.cli import main
    assert main(["data", "recipe", "dedup-only", "--input", str(RAW), "--out", str(tmp_path / "clean")]) == 0
    text = capsys.readouterr().out
    assert "[minhash]\nenabled = true" in text and "#   pii.enabled = false" in text
    (tmp_path / "dedup-only.toml").write_text(text, encoding="utf-8")
    kept, why, _ = _run(load_config(tmp_path / "dedup-only.toml"))
    # no filters: only the planted copies go, and PII stays (dedup-only does not mask it)
    assert set(why) == set(EXACT) | set(NEAR) and "jo.hartley@example.org" in kept["b04"]


def test_the_chapter_shows_examples_pipeline_toml_as_it_is():
    chapter = (EXAMPLES.parent / "docs" / "05-data-curation.md").read_text(encoding="utf-8")
    shown = re.search(r"^```toml\n(.*?)^```", chapter, re.M | re.S).group(1)
    body = (EXAMPLES / "pipeline.toml").read_text(encoding="utf-8")
    assert shown == body[body.index("[input]"):]
