"""`llmlab rag` end to end through the CLI dispatcher: index, search --json, eval --json, ask."""

import json

import pytest

from llmlab.cli import main


@pytest.fixture
def kb(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "ctx.md").write_text("# Context managers\n\nThe with statement calls __enter__ on entry and __exit__ on "
                                 "exit. Define one with a class, or decorate a generator with contextlib.contextmanager.\n")
    (docs / "paris.txt").write_text("Paris is the capital and largest city of France.")
    assert main(["rag", "index", str(docs), "--store", str(tmp_path / "kb"), "--json"]) == 0
    return tmp_path


def test_search_json(kb, capsys):
    capsys.readouterr()
    assert main(["rag", "search", str(kb / "kb"), "what is the capital of France", "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["source"].endswith("paris.txt") and {"text", "score", "source"} <= set(hits[0])


def test_eval_json(kb, capsys):
    qa = kb / "qa.jsonl"
    qa.write_text("\n".join(json.dumps(x) for x in [
        {"question": "Which city is the capital of France?", "gold_doc": "paris.txt"},
        {"question": "How do I write a context manager?", "gold_text": "contextlib.contextmanager"},
        {"question": "no gold here"}]) + "\n")
    capsys.readouterr()
    assert main(["rag", "eval", str(kb / "kb"), "--qa", str(qa), "--modes", "dense,bm25,hybrid,naive", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 2 and out["skipped"] == 1
    assert set(out["modes"]) == {"dense", "bm25", "hybrid", "naive"}
    assert out["modes"]["hybrid"]["recall@1"] == 1.0
    assert set(out["modes"]["dense"]) == {"recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"}


def test_errors_are_messages(tmp_path, capsys):
    assert main(["rag", "search", str(tmp_path / "missing"), "q"]) == 2
    assert "not a RAG store" in capsys.readouterr().err
    assert main(["rag", "index", "--store", str(tmp_path / "kb")]) == 2


@pytest.mark.slow
def test_ask_streams_a_grounded_answer(kb, capsys):
    pytest.importorskip("llmlab.infer")
    capsys.readouterr()
    assert main(["rag", "ask", str(kb / "kb"), "What is the capital of France?", "--max-new-tokens", "16",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "Paris" in out["answer"]
    assert out["sources"][0]["number"] == 1 and out["sources"][0]["source"].endswith("paris.txt")
