"""Engine behaviour a user sees: streamed text equals the returned text whatever ends the reply,
batches honour stop strings and logprobs, chat history is cut by whole turns, per-row sampling."""

from __future__ import annotations

import pytest
import torch

from llmlab.core.errors import LLMLabError
from llmlab.infer import Engine, SamplingConfig
from llmlab.infer.generate import decode_steps
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.tokenizer.char import CharTokenizer

ALPHABET = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)] + \
    list(" .,!?\n:;'-0123456789")
CONFIG = ModelConfig(vocab_size=len(ALPHABET), block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)


def varied_model() -> Transformer:
    """A random model with weights large enough that greedy text does not repeat one character."""
    torch.manual_seed(0)
    model = Transformer(CONFIG)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(varied_model(), CharTokenizer(ALPHABET), torch.device("cpu"), "tiny")


def streamed(engine, prompt, config):
    result: dict = {}
    text = "".join(engine.stream(prompt, config, raw=True, result=result))
    return text, result["completion"]


def test_streamed_text_equals_the_completion_for_every_finish_reason(engine):
    free = engine.generate("Hello", SamplingConfig(max_new_tokens=20, temperature=0), raw=True)
    ids = free.token_ids
    assert len(set(ids[:10])) > 3 and ids.index(ids[9]) > 3, "the test needs varied text"
    never = "\x00" * 30  # a stop string that never matches but holds back up to 29 characters
    cases = {
        "length": SamplingConfig(max_new_tokens=12, temperature=0, stop=[never]),
        # a stop *token* (EOS-like) while stop strings are set: the held-back text must still come out
        "stop token": SamplingConfig(max_new_tokens=20, temperature=0, stop=[never], stop_token_ids=[ids[9]]),
        "stop string": SamplingConfig(max_new_tokens=20, temperature=0, stop=[engine.tokenizer.decode(ids[6:8])]),
    }
    for name, config in cases.items():
        text, completion = streamed(engine, "Hello", config)
        assert text == completion.text, name
    assert streamed(engine, "Hello", cases["length"])[1].finish_reason == "length"
    cut = ids.index(ids[9])
    text, completion = streamed(engine, "Hello", cases["stop token"])
    assert completion.finish_reason == "stop" and text == engine.tokenizer.decode(ids[:cut])
    text, completion = streamed(engine, "Hello", cases["stop string"])
    full = engine.tokenizer.decode(ids)
    assert completion.finish_reason == "stop" and text == full[:full.index(cases["stop string"].stop[0])]


def test_batch_honours_stop_strings_and_logprobs(engine):
    prompts = ["Hello", "To be", "abc"]
    greedy = SamplingConfig(max_new_tokens=16, temperature=0, logprobs=True)
    alone = [engine.generate(p, greedy, raw=True) for p in prompts]
    stop = alone[1].text[4:6]
    configs = [greedy, SamplingConfig(max_new_tokens=16, temperature=0, stop=[stop], logprobs=True),
               SamplingConfig(max_new_tokens=5, temperature=0)]
    batch = engine.generate_batch(prompts, configs, raw=True)
    assert batch[0].text == alone[0].text and batch[0].logprobs == pytest.approx(alone[0].logprobs, abs=1e-5)
    assert batch[1].text == alone[1].text[:alone[1].text.index(stop)] and batch[1].finish_reason == "stop"
    assert batch[2].token_ids == alone[2].token_ids[:5] and batch[2].logprobs is None


def test_rows_sample_with_their_own_parameters(engine):
    # One batch mixing a greedy row and a seeded sampled row: each equals its own run alone.
    model, prompts = engine.model, [engine.tokenizer.encode("Hello"), engine.tokenizer.encode("abc")]
    configs = [SamplingConfig(max_new_tokens=10, temperature=0),
               SamplingConfig(max_new_tokens=10, temperature=1.5, top_k=20, top_p=0.9, seed=7)]
    batch = [[], []]
    for step in decode_steps(model, prompts, configs):
        for b in range(2):
            batch[b].append(int(step.ids[b]))
    alone = [[int(s.ids[0]) for s in decode_steps(model, [p], c)] for p, c in zip(prompts, configs)]
    assert batch == alone


class TurnTokenizer(CharTokenizer):
    """A character tokenizer with a minimal chat template, to test history fitting."""

    chat_template = "t"

    def apply_chat_template(self, messages, add_generation_prompt=True):
        return "".join(f"{m['role'][0]}:{m['content']}\n" for m in messages) + "a:"

    def encode(self, text, allowed_special=False, add_special=False):
        return super().encode(text)


def test_chat_history_is_cut_by_whole_turns_keeping_the_system_prompt():
    engine = Engine(varied_model(), TurnTokenizer(ALPHABET), torch.device("cpu"), "tiny")
    system = {"role": "system", "content": "Be brief."}
    turns = []
    for i in range(6):
        turns += [{"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": f"answer {i}."}]
    turns.append({"role": "user", "content": "last one?"})
    ids = engine.fit_messages([system] + turns, max_new_tokens=10)
    text = engine.tokenizer.decode(ids)
    assert len(ids) <= 64 - 10
    assert text.startswith("s:Be brief.\nu:") and text.endswith("u:last one?\na:")   # whole turns, from a user turn
    assert "question 0" not in text
    with pytest.raises(LLMLabError, match="leaves no room"):
        engine.fit_messages([system, {"role": "user", "content": "x" * 60}], max_new_tokens=10)


def test_text_prompts_of_models_without_a_template_stay_raw(engine):
    assert not engine.has_chat_template
    assert engine.encode_prompt("Hello") == engine.tokenizer.encode("Hello")
