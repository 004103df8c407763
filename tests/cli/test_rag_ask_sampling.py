"""`llmlab rag ask` takes the engine's sampling flags (--temperature, --top-p, --top-k,
--repetition-penalty, --max-new-tokens, --seed, ...) through the same helper as `llmlab generate`,
starting from its own defaults: greedy with a presence penalty against loops (docs/04-rag.md)."""

from __future__ import annotations

import functools
import json

import pytest

from llmlab.cli import main
from llmlab.cli.rag import ASK_PRESENCE_PENALTY, ask_sampling


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    root = tmp_path_factory.mktemp("kb")
    docs = root / "docs"
    docs.mkdir()
    (docs / "ctx.md").write_text("# Context managers\n\nThe with statement calls __enter__ on entry and __exit__ on "
                                 "exit. Define one with a class, or decorate a generator with contextlib.contextmanager.\n")
    (docs / "paris.txt").write_text("Paris is the capital and largest city of France.")
    assert main(["rag", "index", str(docs), "--store", str(root / "kb"), "--json"]) == 0
    return root / "kb"


@functools.lru_cache(maxsize=1)
def _tiny_engine():
    """A random 1-layer model on SmolLM2's tokenizer (it has the chat template `ask` needs)."""
    import torch

    from llmlab.infer import Engine
    from llmlab.model.config import ModelConfig
    from llmlab.model.transformer import Transformer
    from llmlab.tokenizer import load_tokenizer

    tok = load_tokenizer("smollm2")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, block_size=512, n_layer=1, n_head=2, n_embd=16))
    return Engine(model, tok, torch.device("cpu"), "tiny")


@pytest.fixture
def configs(monkeypatch):
    """The SamplingConfig of every answer `ask` generates, with the tiny engine as the generator."""
    from llmlab.infer import Engine

    engine, seen = _tiny_engine(), []
    real = Engine.chat_stream

    def recording(self, messages, config):
        seen.append(config)
        return real(self, messages, config)

    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, *a, **kw: engine))
    monkeypatch.setattr(Engine, "chat_stream", recording)
    return seen


def ask(kb, capsys, *flags: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["rag", "ask", str(kb), "What is the capital of France?", "--mode", "bm25", "--json", *flags])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_ask_defaults_to_greedy_with_a_presence_penalty(kb, capsys, configs):
    code, out, _ = ask(kb, capsys, "--max-new-tokens", "6")
    assert code == 0 and json.loads(out)["sources"][0]["source"].endswith("paris.txt")
    (config,) = configs
    assert config.temperature == 0.0 and config.presence_penalty == ASK_PRESENCE_PENALTY > 0.0
    assert config.repetition_penalty == 1.0  # CTRL's penalty would also punish quoting the passages
    assert config.max_new_tokens == 6 and config.top_p == 1.0 and config.top_k == 0
    assert ask_sampling().max_new_tokens == 256


@pytest.mark.slow
def test_ask_passes_every_sampling_flag_and_a_seed_repeats_the_answer(kb, capsys, configs):
    flags = ["--temperature", "1.2", "--top-p", "0.9", "--top-k", "50", "--repetition-penalty", "1.3",
             "--max-new-tokens", "8", "--seed", "7"]
    first = ask(kb, capsys, *flags)
    again = ask(kb, capsys, *flags)
    other = ask(kb, capsys, *flags[:-1], "8")
    assert first[0] == again[0] == other[0] == 0
    config = configs[0]
    assert (config.temperature, config.top_p, config.top_k, config.repetition_penalty, config.max_new_tokens,
            config.seed) == (1.2, 0.9, 50, 1.3, 8, 7)
    answers = [json.loads(out)["answer"] for _, out, _ in (first, again, other)]
    assert answers[0] == answers[1] and answers[0] != answers[2]  # a random model, sampled: the seed decides


@pytest.mark.slow
def test_ask_refuses_a_bad_sampling_value_before_loading_anything(kb, capsys, monkeypatch):
    from llmlab.infer import Engine

    def no_load(cls, *a, **kw):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(Engine, "load", classmethod(no_load))
    code, out, err = ask(kb, capsys, "--top-p", "0")
    assert code == 2 and "--top-p 0" in err and "(0, 1]" in err and "Traceback" not in err


def test_ask_help_shows_its_own_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["rag", "ask", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0 = greedy (default: 0.0)" in text
    assert f"(OpenAI; 0: off) (default: {ASK_PRESENCE_PENALTY})" in text
    assert "--seed" in text and "--top-k" in text and "--top-p" in text


@pytest.mark.slow
def test_eval_takes_the_retrieval_flags_of_search(kb, tmp_path, capsys, monkeypatch):
    """`rag eval --alpha/--fusion/--ann/--ef` reach Retriever.search, so one command measures a change."""
    from llmlab.rag.store import Retriever

    seen, real = [], Retriever.search

    def recording(self, query, k=5, mode="hybrid", ann=False, ef=128, fusion="weighted", alpha=0.5, *rest, **kw):
        seen.append((mode, ann, ef, fusion, alpha))
        return real(self, query, k, mode, ann, ef, fusion, alpha, *rest, **kw)

    monkeypatch.setattr(Retriever, "search", recording)
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "Which city is the capital of France?", "gold_doc": "paris.txt"}) + "\n")
    assert main(["rag", "eval", str(kb), "--qa", str(qa), "--modes", "hybrid", "--alpha", "0.2", "--fusion", "rrf",
                 "--ann", "--ef", "16", "--json"]) == 0
    assert seen == [("hybrid", True, 16, "rrf", 0.2)]
    assert json.loads(capsys.readouterr().out)["modes"]["hybrid"]["recall@1"] == 1.0
