"""`llmlab rag` end to end through the CLI dispatcher: index, search --json, eval --json, ask."""

import functools
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


def test_bad_flag_values_are_messages(kb, capsys):
    capsys.readouterr()
    assert main(["rag", "index", str(kb / "docs"), "--store", str(kb / "kb2"), "--chunking", "fixed",
                 "--overlap", "300"]) == 2
    err = capsys.readouterr().err
    assert "--overlap" in err and "--chunk-size" in err and "Traceback" not in err
    assert not (kb / "kb2").exists()  # refused before anything was created
    qa = kb / "qa.jsonl"
    qa.write_text(json.dumps({"question": "Which city is the capital of France?", "gold_doc": "paris.txt"}) + "\n")
    assert main(["rag", "eval", str(kb / "kb"), "--qa", str(qa), "--k", "1,five"]) == 2
    err = capsys.readouterr().err
    assert "--k" in err and "five" in err and "1,5,10" in err
    assert main(["rag", "eval", str(kb / "kb"), "--qa", str(qa), "--k", "0"]) == 2


@functools.lru_cache(maxsize=1)
def _smollm2_tokenizer():
    from llmlab.tokenizer import load_tokenizer

    return load_tokenizer("smollm2")


def _tiny_engine(block_size):
    """A random 1-layer model on SmolLM2's tokenizer (it has the chat template `ask` needs)."""
    import torch

    from llmlab.infer import Engine
    from llmlab.model.config import ModelConfig
    from llmlab.model.transformer import Transformer

    tok = _smollm2_tokenizer()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=1, n_head=2,
                                    n_embd=16))
    return Engine(model, tok, torch.device("cpu"), "tiny")


@pytest.mark.slow
def test_ask_refuses_a_context_with_no_room_for_passages(kb, capsys, monkeypatch):
    from llmlab.infer import Engine

    engine = _tiny_engine(128)
    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, *a, **kw: engine))
    capsys.readouterr()
    # the instructions + question take ~106 tokens: 128 - 16 new tokens leaves room for no passage
    assert main(["rag", "ask", str(kb / "kb"), "What is the capital of France?", "--mode", "bm25",
                 "--max-new-tokens", "16", "--json"]) == 2
    err = capsys.readouterr().err
    assert "128-token context" in err and "--max-new-tokens" in err and "smallest retrieved passage" in err


@pytest.mark.slow
def test_ask_warns_when_only_some_passages_fit(kb, capsys, monkeypatch):
    from llmlab.infer import Engine

    long = " ".join(f"Paris fact number {i} is about the capital of France." for i in range(12))
    (kb / "docs" / "more.txt").write_text(long)
    assert main(["rag", "index", str(kb / "docs"), "--store", str(kb / "kb"), "--json"]) == 0
    engine = _tiny_engine(210)  # ~100 tokens of room: paris.txt (10 tokens) and ctx.md (39), not more.txt (146)
    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, *a, **kw: engine))
    capsys.readouterr()
    assert main(["rag", "ask", str(kb / "kb"), "What is the capital of France?", "--mode", "bm25",
                 "--max-new-tokens", "4", "--json"]) == 0
    out = capsys.readouterr()
    assert "only 2 of 3 retrieved passages fit" in out.err
    sources = {s["source"].rsplit("/", 1)[-1] for s in json.loads(out.out)["sources"]}
    assert sources == {"paris.txt", "ctx.md"}


@pytest.mark.slow
def test_ask_streams_a_grounded_answer(kb, capsys):
    pytest.importorskip("llmlab.infer")
    capsys.readouterr()
    assert main(["rag", "ask", str(kb / "kb"), "What is the capital of France?", "--max-new-tokens", "16",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "Paris" in out["answer"]
    assert out["sources"][0]["number"] == 1 and out["sources"][0]["source"].endswith("paris.txt")
