"""Continuous batching on the paged KV cache gives each request what it would get alone: greedy tokens
identical whatever joins, leaves, is preempted or hits the prefix cache; blocks never leak."""

from __future__ import annotations

import pytest
import torch

from llmlab.core.errors import LLMLabError
from llmlab.infer import Engine, SamplingConfig
from llmlab.infer.block_manager import BlockManager, NoFreeBlocks
from llmlab.infer.continuous import ContinuousEngine, QueueFull
from llmlab.infer.scheduler import Scheduler, SchedulerConfig, Sequence
from llmlab.model.config import ModelConfig
from llmlab.tokenizer.char import CharTokenizer

ALPHABET = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list(" .,!?\n")
CONFIG = ModelConfig(vocab_size=len(ALPHABET), block_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
GREEDY = SamplingConfig(max_new_tokens=12, temperature=0)
PROMPTS = ["hello there", "a", "the quick brown fox jumps over", "zz top", "lorem ipsum dolor sit amet, consectetur"]


@pytest.fixture(scope="module")
def engine(varied_model) -> Engine:
    return Engine(varied_model(CONFIG), CharTokenizer(ALPHABET), torch.device("cpu"), "tiny")


@pytest.fixture(scope="module")
def alone(engine) -> list[list[int]]:
    """Each prompt decoded by itself through the contiguous cache (llmlab.infer.generate)."""
    return [engine.generate(p, GREEDY, raw=True).token_ids for p in PROMPTS]


def encoded(engine) -> list[list[int]]:
    return [engine.encode_prompt(p, raw=True) for p in PROMPTS]


def run_all(ce: ContinuousEngine) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    while ce.has_work():
        for e in ce.step():
            if e.token_id is not None:
                tokens.setdefault(e.request_id, []).append(e.token_id)
    return tokens


def assert_no_leak(ce: ContinuousEngine) -> None:
    blocks = ce.scheduler.blocks
    assert blocks.num_used == 0 and all(r == 0 for r in blocks.refs)


@pytest.mark.parametrize("config", [
    SchedulerConfig(max_batch=8),                                     # all together
    SchedulerConfig(max_batch=2, max_step_tokens=7, block_size=4),    # small chunks, queueing
    SchedulerConfig(max_batch=5, block_size=4, num_blocks=16),        # a pool too small: preemptions
    SchedulerConfig(max_batch=8, policy="prefill-first", max_step_tokens=9),
], ids=["batch", "chunked", "preempting", "prefill-first"])
def test_batched_equals_alone(engine, alone, config):
    ce = ContinuousEngine.from_engine(engine, config)
    assert ce.run(encoded(engine), [GREEDY] * len(PROMPTS))[0].token_ids == alone[0]
    assert_no_leak(ce)
    ce = ContinuousEngine.from_engine(engine, config)
    ids = [ce.submit(p, GREEDY) for p in encoded(engine)]
    got = run_all(ce)
    assert [got[i] for i in ids] == alone
    if config.num_blocks:
        assert ce.stats()["preemptions"] > 0, "the small pool should have forced preemptions"
    assert_no_leak(ce)


def test_requests_arriving_at_different_steps(engine, alone):
    ce = ContinuousEngine.from_engine(engine, SchedulerConfig(max_batch=4, max_step_tokens=8, block_size=4))
    prompts, tokens, ids = encoded(engine), {}, {}
    for step in range(200):
        if step % 3 == 0 and len(ids) < len(prompts):      # a new request every third step
            ids[len(ids)] = ce.submit(prompts[len(ids)], GREEDY)
        for e in ce.step():
            if e.token_id is not None:
                tokens.setdefault(e.request_id, []).append(e.token_id)
        if len(ids) == len(prompts) and not ce.has_work():
            break
    assert [tokens[ids[i]] for i in range(len(prompts))] == alone
    assert_no_leak(ce)


def test_prefix_cache_hits_give_identical_output(engine):
    shared = "you are a helpful assistant. answer briefly and kindly, please. "
    prompts = [engine.encode_prompt(shared + q, raw=True) for q in ("what is up", "why so", "who are you")]
    results = {}
    for cache in (False, True):
        ce = ContinuousEngine.from_engine(engine, SchedulerConfig(max_batch=1, block_size=8, prefix_cache=cache))
        events = {}
        for p in prompts:   # one after another: the first one's blocks are cached when the next arrives
            rid = ce.submit(p, GREEDY)
            while ce.has_work():
                for e in ce.step():
                    events.setdefault(rid, []).append(e)
        results[cache] = [[e.token_id for e in events[r] if e.token_id is not None] for r in events]
        cached = [events[r][-1].cached_tokens for r in events]
        if cache:
            assert cached[0] == 0 and all(c >= 64 for c in cached[1:]), cached   # 8 whole blocks of the prefix
            assert ce.stats()["prefix_cache_hit_tokens"] == sum(cached)
        else:
            assert cached == [0, 0, 0]
        assert_no_leak(ce)
    assert results[True] == results[False]


def test_cancel_frees_blocks_and_spares_the_others(engine, alone):
    ce = ContinuousEngine.from_engine(engine, SchedulerConfig(max_batch=8, block_size=4))
    ids = [ce.submit(p, GREEDY) for p in encoded(engine)]
    tokens: dict[str, list[int]] = {}
    for _ in range(4):
        for e in ce.step():
            tokens.setdefault(e.request_id, []).append(e.token_id)
    ce.cancel(ids[2])
    ce.cancel("never-submitted")             # unknown ids are ignored
    for rid, toks in run_all(ce).items():
        tokens.setdefault(rid, []).extend(toks)
    assert ids[2] not in ce.sequences
    assert [tokens[ids[i]] for i in (0, 1, 3, 4)] == [alone[i] for i in (0, 1, 3, 4)]
    assert_no_leak(ce)


def test_each_sequence_keeps_its_own_seed_and_sampling(engine):
    sampled = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    ce = ContinuousEngine.from_engine(engine, SchedulerConfig())
    alone_sampled = ce.run([encoded(engine)[0]], [sampled])[0].token_ids
    mixed = ce.run(encoded(engine), [GREEDY, sampled, GREEDY, sampled, GREEDY])
    prompt0 = ce.run([encoded(engine)[0]] * 2, [sampled, SamplingConfig(max_new_tokens=10, temperature=1.0, seed=8)])
    assert prompt0[0].token_ids == alone_sampled          # batched with another seed: same draws
    assert mixed[1].token_ids != mixed[3].token_ids or encoded(engine)[1] == encoded(engine)[3]


def test_logprobs_top_logprobs_and_penalties(engine):
    ce = ContinuousEngine.from_engine(engine, SchedulerConfig())
    rid = ce.submit(encoded(engine)[0], SamplingConfig(max_new_tokens=6, temperature=0, logprobs=True, top_logprobs=3))
    events = [e for e in (run_all_events(ce)) if e.request_id == rid and e.token_id is not None]
    for e in events:
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0][0] == e.token_id     # greedy: the best one
        assert e.top_logprobs[0][1] == pytest.approx(e.logprob)
        assert [lp for _, lp in e.top_logprobs] == sorted((lp for _, lp in e.top_logprobs), reverse=True)
    # A huge presence penalty forbids repeating any generated token.
    out = ce.run([encoded(engine)[1]], [SamplingConfig(max_new_tokens=20, temperature=0, presence_penalty=100.0)])
    assert len(set(out[0].token_ids)) == len(out[0].token_ids)


def run_all_events(ce: ContinuousEngine) -> list:
    events = []
    while ce.has_work():
        events += ce.step()
    return events


def test_bad_requests_are_refused_clearly(engine):
    ce = ContinuousEngine.from_engine(engine, SchedulerConfig(max_queue=2))
    with pytest.raises(LLMLabError, match="context of 128"):
        ce.submit([1] * 120, SamplingConfig(max_new_tokens=20))
    with pytest.raises(LLMLabError, match="adapter 'sql' is not loaded"):
        ce.submit([1, 2], GREEDY, adapter="sql")
    with pytest.raises(LLMLabError, match="no tokens"):
        ce.submit([], GREEDY)
    ce.submit([1], GREEDY)
    ce.submit([2], GREEDY)
    with pytest.raises(QueueFull):
        ce.submit([3], GREEDY)
    small = ContinuousEngine.from_engine(engine, SchedulerConfig(block_size=4, num_blocks=3))
    with pytest.raises(LLMLabError, match="needs 8 KV blocks"):
        small.submit([1] * 20, GREEDY)


def test_generate_batch_runs_on_the_scheduler(engine, alone):
    out = engine.generate_batch(PROMPTS, GREEDY, raw=True)
    assert [c.token_ids for c in out] == alone
    assert all(c.finish_reason == "length" for c in out)


# ---------------------------------------------------------------------- the pieces alone


def test_block_manager_counts_references_and_evicts_least_recent():
    m = BlockManager(num_blocks=3, block_size=2)
    a, b = m.allocate(), m.allocate()
    ha = m.register(a, None, [5, 6])
    m.register(b, ha, [7, 8])
    blocks, hashes = m.lookup_prefix([5, 6, 7, 8, 9])
    assert blocks == [a, b] and m.refs[a] == 2 and hashes[0] == ha
    m.release([a, b])
    m.release([a, b])
    assert m.num_free == 3
    assert m.lookup_prefix([5, 6, 7, 8])[0] == [a, b]        # freed, but still cached
    m.release([a, b])
    assert m.lookup_prefix([5, 6], extra="adapter")[0] == []  # another adapter: other keys
    c = m.allocate()              # the never-used block goes first...
    d = m.allocate()              # ...then the tail block b (released before a), forgetting its contents
    assert c not in (a, b) and d == b
    assert m.lookup_prefix([5, 6, 7, 8])[0] == [a]
    m.release([a])
    assert m.allocate() == a and m.num_free == 0
    with pytest.raises(NoFreeBlocks):
        m.allocate()


def test_scheduler_chunks_a_long_prompt_while_others_decode():
    s = Scheduler(SchedulerConfig(max_batch=4, max_step_tokens=8, block_size=4), num_blocks=64)
    short = Sequence("short", [1, 2], max_tokens=50)
    s.add(short)
    for c in s.schedule():
        s.advance(c)
    short.output.append(3)                                   # decoding now
    s.add(Sequence("long", list(range(10, 40)), max_tokens=5))
    lengths = []
    for _ in range(5):
        plan = s.schedule()
        assert plan[0].sequence is short and plan[0].length == 1   # the decode never waits
        lengths.append(sum(c.length for c in plan[1:]))
        for c in plan:
            s.advance(c)
        short.output.append(3)
    assert lengths[:4] == [7, 7, 7, 7] and sum(lengths) == 30


def test_adapters_per_sequence_in_one_batch_equal_merged_models(engine):
    """Two adapters and the base in one continuous batch: each sequence decodes what the model
    with its adapter merged decodes alone."""
    import copy

    torch.manual_seed(1)
    model = engine.model
    targets = ["blocks.0.attn.wq", "blocks.0.attn.wv", "blocks.1.mlp.w_down"]
    adapters = {}
    for name in ("sql", "facts"):
        adapters[name] = {}
        for t in targets:
            layer = model.get_submodule(t)
            adapters[name][t] = (torch.randn(4, layer.in_features) * 0.3, torch.randn(layer.out_features, 4) * 0.3, 2.0)
    merged = {}
    for name, factors in adapters.items():
        m = copy.deepcopy(model)
        with torch.no_grad():
            for t, (A, B, s) in factors.items():
                m.get_submodule(t).weight += s * B @ A
        merged[name] = Engine(m, engine.tokenizer, torch.device("cpu"), name)
    prompts = encoded(engine)[:3]
    expected = [merged["sql"].generate(prompts[0], GREEDY).token_ids, engine.generate(prompts[1], GREEDY).token_ids,
                merged["facts"].generate(prompts[2], GREEDY).token_ids]
    ce = ContinuousEngine(copy.deepcopy(model), engine.tokenizer, SchedulerConfig(block_size=4), adapters)
    assert ce.adapter_names == ["sql", "facts"]
    out = ce.run(prompts, [GREEDY] * 3, adapters=["sql", None, "facts"])
    assert [c.token_ids for c in out] == expected
    assert expected[0] != engine.generate(prompts[0], GREEDY).token_ids, "the adapter should change the output"
    # The same prompt under two adapters must not share prefix-cache blocks.
    ce2 = ContinuousEngine(copy.deepcopy(model), engine.tokenizer, SchedulerConfig(block_size=4, max_batch=1), adapters)
    first = ce2.run([prompts[2]], [GREEDY], adapters=["facts"])[0].token_ids
    again = ce2.run([prompts[2]], [GREEDY], adapters=[None])[0].token_ids
    assert first == expected[2] and again == engine.generate(prompts[2], GREEDY).token_ids


@pytest.mark.parametrize("policy", ["decode-first", "prefill-first"])
def test_scheduler_always_drains_small_pools(policy):
    """Random small pools, budgets and arrivals: every request finishes with all its tokens, in a
    bounded number of steps (no livelock between preemption and admission), and no block leaks."""
    import itertools
    import random

    for seed in range(300):
        rng = random.Random(seed)
        config = SchedulerConfig(max_batch=rng.choice([1, 2, 4, 8]), max_step_tokens=rng.choice([1, 2, 5, 16, 64]),
                                 block_size=rng.choice([1, 2, 4]), prefix_cache=rng.random() < 0.5, policy=policy)
        pool = rng.choice([4, 6, 8, 16])
        scheduler, fake = Scheduler(config, pool), itertools.count(10**6)
        pending = [Sequence(f"r{i}", [rng.randint(0, 3) for _ in range(rng.randint(1, 10))], rng.randint(1, 8))
                   for i in range(rng.randint(1, 8))]
        pending = [s for s in pending if -(-(len(s.prompt) + s.max_tokens) // config.block_size) <= pool]
        done, steps = [], 0
        while pending or scheduler.has_work():
            if pending and (rng.random() < 0.5 or not scheduler.has_work()):
                scheduler.add(pending.pop(0))
            plan = scheduler.schedule()
            steps += 1
            assert steps < 3000, f"seed {seed}: no progress ({config}, {pool} blocks)"
            for c in plan:
                scheduler.advance(c)
                if c.sample:
                    c.sequence.output.append(next(fake))
                    if len(c.sequence.output) == c.sequence.max_tokens:
                        scheduler.finish(c.sequence)
                        done.append(c.sequence)
        assert all(len(s.output) == s.max_tokens for s in done)
        assert scheduler.blocks.num_free == pool and all(r == 0 for r in scheduler.blocks.refs), f"seed {seed}"
