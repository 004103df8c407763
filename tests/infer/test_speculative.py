"""Speculative decoding: greedy output token-identical to plain decoding (prompt lookup and a draft
model, with acceptances and rejections), the rejection rule's output distribution equal to the
target's, stops / max tokens / context limit / seeds as plain decoding, clear errors."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from llmlab.core.errors import LLMLabError
from llmlab.infer import Engine, SamplingConfig
from llmlab.infer.generate import decode_steps, run_model
from llmlab.infer.speculative import (SpeculativeConfig, SpeculativeStats, accept_drafts, expected_tokens_per_pass,
                                      lookup_draft, pick, speculative_steps)
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.tokenizer.char import CharTokenizer

ALPHABET = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)] + \
    list(" .,!?\n:;'-0123456789")
CONFIG = ModelConfig(vocab_size=len(ALPHABET), block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
REPEATING = [1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 5, 6, 7, 1, 2, 3]


def random_model(seed: int = 0, config: ModelConfig = CONFIG, noise: float = 0.0) -> Transformer:
    """Weights large enough that greedy text varies; noise > 0: a perturbed copy (a weaker drafter)."""
    torch.manual_seed(seed)
    model = Transformer(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
        if noise:
            generator = torch.Generator().manual_seed(seed + 1)
            for p in model.parameters():
                p.add_(noise * torch.randn(p.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def target() -> Transformer:
    return random_model(0)


def plain(model, prompt, config) -> list[int]:
    return [int(s.ids[0]) for s in decode_steps(model, [prompt], config)]


def speculative(model, prompt, config, spec, draft=None) -> tuple[list[int], SpeculativeStats]:
    stats = SpeculativeStats(spec.method)
    return [int(s.ids[0]) for s in speculative_steps(model, prompt, config, spec, draft, stats=stats)], stats


# ----------------------------------------------------------------------------- greedy equality


def copying_prompt(model: Transformer, start: list[int]) -> list[int]:
    """start + the model's own greedy continuation + start again: a context whose continuation
    partly repeats text already in it, as a RAG answer quotes its documents."""
    return start + plain(model, start, SamplingConfig(max_new_tokens=20, temperature=0)) + start


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_prompt_lookup_equals_plain_decoding_and_accepts_some(target, penalty):
    bigram = random_model(0)            # attention off: the next token depends on the last one only,
    with torch.no_grad():               # so greedy text falls into a cycle that prompt lookup predicts
        for block in bigram.blocks:
            block.attn.wo.weight.zero_()
    config = SamplingConfig(max_new_tokens=30, temperature=0, repetition_penalty=penalty)
    for model, prompt in [(target, copying_prompt(target, [20, 30, 40, 50, 60])), (target, REPEATING),
                          (bigram, REPEATING)]:
        expected = plain(model, prompt, config)
        for k, ngram in [(5, 3), (2, 1), (8, 2)]:
            got, stats = speculative(model, prompt, config, SpeculativeConfig("prompt-lookup", num_draft=k, ngram=ngram))
            assert got == expected, (k, ngram)
            assert stats.tokens == 30 and stats.target_passes == 30 - stats.accepted
            if model is target and prompt[0] == 20:
                assert 0 < stats.accepted < stats.drafted        # the drafter fired: some kept, some rejected
            if model is bigram and penalty == 1.0:
                assert stats.accepted >= 10                       # the cycle is drafted and kept


def test_greedy_draft_model_equals_plain_decoding(target):
    config = SamplingConfig(max_new_tokens=30, temperature=0)
    expected = plain(target, [5, 9, 14], config)
    got, stats = speculative(target, [5, 9, 14], config, SpeculativeConfig("draft", num_draft=4),
                             random_model(0, noise=0.02))
    assert got == expected and 0 < stats.accepted < stats.drafted
    # the target as its own drafter: every draft kept, k + 1 tokens per verification pass
    got, stats = speculative(target, [5, 9, 14], config, SpeculativeConfig("draft", num_draft=4), target)
    assert got == expected and stats.accepted == stats.drafted
    assert stats.target_passes == 1 + math.ceil(29 / 5)


def test_static_cache_and_a_decode_fn_as_with_compile(target):
    """--compile: the cache is static and the rounds with nothing drafted go through decode_fn
    (run_model here: the compiled step's signature without the minute of compiling)."""
    config = SamplingConfig(max_new_tokens=30, temperature=0)
    prompt = copying_prompt(target, [20, 30, 40, 50, 60])
    calls = []

    def decode_fn(*args):
        calls.append(args[1].shape)
        return run_model(*args)

    stats = SpeculativeStats()
    got = [int(s.ids[0]) for s in speculative_steps(target, prompt, config, SpeculativeConfig(), stats=stats,
                                                    decode_fn=decode_fn)]
    assert got == plain(target, prompt, config) and stats.accepted > 0
    assert calls and all(shape == (1, 1) for shape in calls) and len(calls) < stats.target_passes - 1


def test_drafts_never_pass_the_context_or_max_new_tokens(target):
    prompt = (REPEATING * 4)[:64 - 20]                   # prompt + max_new_tokens == block_size exactly
    config = SamplingConfig(max_new_tokens=20, temperature=0)
    expected = plain(target, prompt, config)
    for spec, draft in [(SpeculativeConfig("prompt-lookup", num_draft=8), None),
                        (SpeculativeConfig("draft", num_draft=8), target)]:
        got, stats = speculative(target, prompt, config, spec, draft)
        assert got == expected and len(got) == 20
    with pytest.raises(LLMLabError, match="exceeds the model's context"):
        list(speculative_steps(target, prompt + [1], config, SpeculativeConfig()))
    truncated = list(speculative_steps(target, prompt + [1, 2], config, SpeculativeConfig(), overflow="truncate"))
    assert [int(s.ids[0]) for s in truncated] == [int(s.ids[0]) for s in
                                                  decode_steps(target, [prompt + [1, 2]], config, "truncate")]


# ----------------------------------------------------------------------------- the rejection rule


P = torch.tensor([[0.50, 0.20, 0.15, 0.10, 0.05], [0.05, 0.05, 0.30, 0.30, 0.30],
                  [0.25, 0.25, 0.25, 0.15, 0.10], [0.10, 0.60, 0.10, 0.10, 0.10], [0.2, 0.2, 0.2, 0.2, 0.2]])
Q = torch.tensor([[0.10, 0.10, 0.20, 0.30, 0.30], [0.40, 0.40, 0.10, 0.05, 0.05],
                  [0.05, 0.05, 0.10, 0.40, 0.40], [0.30, 0.10, 0.30, 0.20, 0.10], [0.2, 0.2, 0.2, 0.2, 0.2]])


DRAFTERS = {"draft-model": Q, "close-draft": 0.9 * P + 0.1 / P.size(1), "prompt-lookup": None}


def emitted_marginals(drafter: str, trials: int = 4000, k: int = 2, positions: int = 3) -> torch.Tensor:
    """Run the rule round after round on a "model" whose distribution at output position j is P[j]
    whatever came before (so the right joint is the product of the P[j]), drafting from DRAFTERS'
    q[j] (the close one is mostly accepted: bonus tokens), or always token 4 as a deterministic
    prompt-lookup drafter; return each token's frequency at the first `positions` outputs, (positions, V)."""
    q = DRAFTERS[drafter]
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(positions, P.size(1))
    for _ in range(trials):
        out: list[int] = []
        while len(out) < positions:
            j = len(out)
            drafts = [4] * k if q is None else [pick(q[j + i], generator) for i in range(k)]
            n, following = accept_drafts(P[j:j + k + 1], drafts, None if q is None else q[j:j + k],
                                         greedy=False, generator=generator)
            out += drafts[:n] + [following]
        for j in range(positions):
            counts[j, out[j]] += 1
    return counts / trials


@pytest.mark.parametrize("drafter", list(DRAFTERS))
def test_rejection_rule_emits_the_target_distribution(drafter):
    freq = emitted_marginals(drafter)
    # 4,000 trials (seeded, so the outcome is fixed): a frequency's standard error is at most 0.008.
    # Checked to fail for a residual of p instead of max(0, p - q), for q/p in place of p/q, and
    # for the bonus token drawn from the last drafted position instead of the one past it.
    assert (freq - P[:3]).abs().max() < 0.035, (freq, P[:3])


def test_greedy_rule_keeps_exactly_the_argmax_prefix():
    p = torch.nn.functional.one_hot(torch.tensor([3, 1, 4, 2]), 5).float()
    assert accept_drafts(p, [3, 1, 0], None, greedy=True) == (2, 4)
    assert accept_drafts(p, [3, 1, 4], None, greedy=True) == (3, 2)
    assert accept_drafts(p, [0, 1, 4], None, greedy=True) == (0, 3)


@pytest.mark.slow
def test_sampled_generation_follows_the_target_through_the_loop():
    """End to end, temperature 1 with top-k 3 on a 6-token vocabulary: the second token (the first
    one a verification pass emits) has the target's exact marginal, computed from the model."""
    config6 = ModelConfig(vocab_size=6, block_size=16, n_layer=1, n_head=2, n_kv_head=1, n_embd=16)
    target, draft = random_model(3, config6), random_model(4, config6)
    prompt = [1, 2, 3]

    def processed(ids):
        logits = target(torch.tensor([ids]))["logits"][0, -1]
        kept = logits.topk(3).indices
        return torch.zeros(6).index_copy_(0, kept, logits[kept].softmax(-1))

    with torch.no_grad():
        first = processed(prompt)
        exact = sum(first[t] * processed(prompt + [t]) for t in range(6))
    counts, trials = torch.zeros(6), 1000
    for seed in range(trials):
        config = SamplingConfig(max_new_tokens=2, temperature=1.0, top_k=3, seed=seed)
        ids, _ = speculative(target, prompt, config, SpeculativeConfig("draft", num_draft=1), draft)
        counts[ids[1]] += 1
    assert (counts / trials - exact).abs().max() < 0.06, (counts / trials, exact)   # 3.8 standard errors
    assert counts[exact == 0].sum() == 0                         # never a token top-k removed


def test_seeds_make_sampled_output_reproducible(target):
    spec = SpeculativeConfig("draft", num_draft=3)
    draft = random_model(0, noise=0.05)
    runs = [speculative(target, [5, 9], SamplingConfig(max_new_tokens=20, temperature=0.9, seed=s), spec, draft)[0]
            for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


# ----------------------------------------------------------------------------- engine, helpers, errors


def test_engine_stops_as_plain_decoding_and_reports_counts(target):
    tok = CharTokenizer(ALPHABET)
    prompt = tok.decode(copying_prompt(target, [20, 30, 40, 50, 60]))
    base = Engine(target, tok, torch.device("cpu"), "tiny")
    spec = Engine(target, tok, torch.device("cpu"), "tiny", speculative=SpeculativeConfig("prompt-lookup"))
    free = base.generate(prompt, SamplingConfig(max_new_tokens=30, temperature=0), raw=True)
    cases = [SamplingConfig(max_new_tokens=n, temperature=0) for n in (1, 2, 7, 30)]
    cases.append(SamplingConfig(max_new_tokens=30, temperature=0, stop_token_ids=[free.token_ids[12]]))
    cases.append(SamplingConfig(max_new_tokens=30, temperature=0, stop=[free.text[14:17]]))
    for config in cases:
        want, got = base.generate(prompt, config, raw=True), spec.generate(prompt, config, raw=True)
        streamed = "".join(spec.stream(prompt, config, raw=True))
        assert (got.token_ids, got.text, got.finish_reason) == (want.token_ids, want.text, want.finish_reason)
        assert streamed == want.text
    counts = spec.generate(prompt, cases[3], raw=True).timings["speculative"]
    assert counts["accepted"] > 0 and counts["acceptance_rate"] == counts["accepted"] / counts["drafted"]
    assert counts["target_passes"] == 30 - counts["accepted"]
    assert [c.token_ids for c in spec.generate_batch([prompt, "ab"], cases[2], raw=True)] == \
        [c.token_ids for c in base.generate_batch([prompt, "ab"], cases[2], raw=True)]


def test_lookup_draft_takes_the_latest_longest_match():
    tokens = [1, 2, 3, 9, 1, 2, 3, 8, 7, 5, 2, 3]
    assert lookup_draft(tokens, 3, 3) == [8, 7, 5]          # "2 3" last seen before 8 7 5 (3-gram 5 2 3 absent)
    assert lookup_draft(tokens, 3, 1) == [8, 7, 5]
    assert lookup_draft([1, 2, 3], 4, 3) == [] and lookup_draft([4], 2, 3) == []
    assert lookup_draft([5, 6, 5], 4, 3) == [6, 5]          # continuation runs up to the end of the context


def test_expected_tokens_per_pass():
    assert expected_tokens_per_pass(0.0, 5) == 1.0 and expected_tokens_per_pass(1.0, 5) == 6.0
    assert expected_tokens_per_pass(0.5, 3) == pytest.approx(1.875)       # 1 + 1/2 + 1/4 + 1/8


def test_a_draft_with_another_vocabulary_is_refused(target):
    other = random_model(0, ModelConfig(vocab_size=50, block_size=64, n_layer=1, n_head=4, n_kv_head=2, n_embd=32))
    with pytest.raises(LLMLabError, match=f"vocabulary has 50 tokens and the target's {len(ALPHABET)}"):
        Engine(target, CharTokenizer(ALPHABET), torch.device("cpu"), speculative=SpeculativeConfig("draft"),
               draft_model=other)
    with pytest.raises(LLMLabError, match="--num-draft"):
        SpeculativeConfig(num_draft=0)
    with pytest.raises(LLMLabError, match="shift"):
        list(speculative_steps(target, [1, 2], SamplingConfig(max_new_tokens=3), SpeculativeConfig(), overflow="shift"))


def test_cli_flags_make_the_config():
    from llmlab.cli.generate import add_arguments, speculative_from

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parse = lambda *argv: speculative_from(parser.parse_args(["--prompt", "x", *argv]))
    assert parse() is None
    assert parse("--speculative", "prompt-lookup", "--ngram", "2") == SpeculativeConfig("prompt-lookup", ngram=2)
    assert parse("--draft", "m.gguf", "--num-draft", "3") == SpeculativeConfig("draft", num_draft=3, draft="m.gguf")
    for argv, message in [(("--speculative", "draft"), "needs --draft"),
                          (("--speculative", "prompt-lookup", "--draft", "m"), "goes with --speculative draft")]:
        with pytest.raises(LLMLabError, match=message):
            parse(*argv)


# ----------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_greedy_is_identical_with_prompt_lookup_and_a_draft(capsys):
    import json

    from llmlab.cli import main

    engine = Engine.load("smollm2", device="cpu")
    messages = [{"role": "user", "content": "Repeat this sentence exactly: The quick brown fox jumps over the "
                                            "lazy dog near the river bank."}]
    config = SamplingConfig(max_new_tokens=16, temperature=0)
    want = engine.generate(messages, config)
    engine.use_speculative(SpeculativeConfig("prompt-lookup"))
    got = engine.generate(messages, config)
    assert got.token_ids == want.token_ids and got.timings["speculative"]["accepted"] > 0
    engine.use_speculative(SpeculativeConfig("draft", num_draft=4), draft_model=engine.model)
    got = engine.generate(messages, config)
    assert got.token_ids == want.token_ids
    assert main(["generate", "--prompt", messages[0]["content"], "--max-new-tokens", "6", "--temperature", "0",
                 "--device", "cpu", "--speculative", "prompt-lookup", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["token_ids"] == want.token_ids[:6] and out["timings"]["speculative"]["target_passes"] <= 6
