"""The virtual-clock simulator: the real Scheduler on a cost model; every test runs in milliseconds."""

from __future__ import annotations

import pytest

from llmlab.core.errors import LLMLabError
from llmlab.infer.scheduler import SchedulerConfig
from llmlab.infer.simulator import Arrival, CostModel, SimResult, main, poisson_trace, simulate, table


def check_complete(result: SimResult, trace: list[Arrival]) -> None:
    """Every request finished with exactly its max_tokens, and no KV block leaked."""
    assert result.summary["completed"] == len(trace)
    for record, arrival in zip(result.records, trace):
        assert len(record.token_times) == arrival.max_tokens
        assert record.finish == record.token_times[-1] >= record.token_times[0] > arrival.time
    assert result.free_blocks == result.num_blocks


def test_poisson_trace_is_deterministic_and_shares_its_prefix():
    trace = poisson_trace(50, 4.0, (10, 40), (2, 9), seed=3, shared_prefix=8)
    assert trace == poisson_trace(50, 4.0, (10, 40), (2, 9), seed=3, shared_prefix=8)
    assert trace != poisson_trace(50, 4.0, (10, 40), (2, 9), seed=4, shared_prefix=8)
    times = [a.time for a in trace]
    assert times == sorted(times) and 50 / 4.0 * 0.6 < times[-1] < 50 / 4.0 * 1.4   # mean gap 1/rate
    assert all(10 <= len(a.prompt) <= 40 and 2 <= a.max_tokens <= 9 for a in trace)
    assert len({tuple(a.prompt[:8]) for a in trace}) == 1
    assert len({tuple(a.prompt[8:10]) for a in trace}) > 40
    assert {a.time for a in poisson_trace(5, float("inf"), 4, 3)} == {0.0}
    with pytest.raises(LLMLabError, match="shared_prefix"):
        poisson_trace(5, 1.0, (10, 40), 3, shared_prefix=10)
    with pytest.raises(LLMLabError, match="prompt_len"):
        poisson_trace(5, 1.0, (40, 10), 3)


def test_same_trace_twice_gives_identical_results():
    trace = poisson_trace(40, 8.0, (16, 200), (4, 40), seed=1, shared_prefix=12)
    config = SchedulerConfig(max_batch=8, max_step_tokens=64)
    first, second = simulate(config, trace), simulate(config, trace)
    assert first.records == second.records and first.summary == second.summary
    check_complete(first, trace)


def test_tiny_pool_preempts_yet_every_request_completes_and_frees_its_blocks():
    trace = poisson_trace(12, float("inf"), 64, 64, seed=0)
    result = simulate(SchedulerConfig(max_batch=8, block_size=16, prefix_cache=False), trace, num_blocks=16)
    assert result.summary["preemptions"] > 0
    assert sum(r.preemptions for r in result.records) == result.summary["preemptions"]
    check_complete(result, trace)


def test_max_batch_1_serves_one_request_at_a_time():
    trace = poisson_trace(20, 10.0, (8, 100), (2, 20), seed=2)
    result = simulate(SchedulerConfig(max_batch=1), trace)
    check_complete(result, trace)
    lifetimes = sorted((r.started, r.finish) for r in result.records)
    assert all(later[0] >= earlier[1] for earlier, later in zip(lifetimes, lifetimes[1:]))
    cost = CostModel()
    for record in result.records:    # every gap is one step decoding this request alone, at its position
        expected = [cost.step_overhead_s + cost.per_decode_seq_s + cost.per_context_token_s * (record.prompt_tokens + i)
                    for i in range(record.max_tokens - 1)]
        assert record.itls == pytest.approx(expected)


def test_continuous_batching_multiplies_throughput():
    cost = CostModel()
    assert cost.step_overhead_s > 5 * cost.per_decode_seq_s       # decode is memory-bound: per step, not per row
    trace = poisson_trace(64, float("inf"), (16, 64), 64, seed=0)
    serial = simulate(SchedulerConfig(max_batch=1), trace, cost)
    batched = simulate(SchedulerConfig(max_batch=16), trace, cost)
    check_complete(batched, trace)
    assert batched.summary["throughput_tok_s"] > 4 * serial.summary["throughput_tok_s"]
    assert batched.summary["e2e_mean_s"] < serial.summary["e2e_mean_s"] / 3


def test_prefill_first_trades_inter_token_latency_for_time_to_first_token():
    # With chunked prefill, decode-first already gives prompts what the decodes leave of the budget,
    # so prefill-first only wins that share back: a small budget (64, 16 decodes) shows it. It buys
    # that by stalling every decode for whole steps of prompts: the worst gaps grow many times.
    # (At max_step_tokens 256 its p95 ITL is often *lower*: it merges the stalls into fewer, longer
    # gaps, fewer than 5% of all; p99 and max still grow.)
    trace = poisson_trace(60, 0.15, (600, 1000), (20, 60), seed=0)
    decode_first = simulate(SchedulerConfig(max_step_tokens=64), trace).summary
    prefill_first = simulate(SchedulerConfig(max_step_tokens=64, policy="prefill-first"), trace).summary
    assert prefill_first["ttft_mean_s"] < 0.98 * decode_first["ttft_mean_s"]
    assert prefill_first["itl_p95_s"] > 1.05 * decode_first["itl_p95_s"]
    assert prefill_first["itl_max_s"] > 5 * decode_first["itl_max_s"]


def test_prefix_cache_cuts_time_to_first_token_of_a_shared_prompt():
    # 1 request/s: each arrives after the one before has prefilled (blocks are shared once computed).
    trace = poisson_trace(30, 1.0, (300, 340), (8, 16), seed=0, shared_prefix=288)
    cached = simulate(SchedulerConfig(prefix_cache=True), trace)
    uncached = simulate(SchedulerConfig(prefix_cache=False), trace)
    check_complete(cached, trace)
    assert uncached.summary["prefix_hit_tokens"] == 0
    # Every request after the first finds the 288 shared tokens (18 full blocks of 16) cached.
    assert all(r.cached_tokens == 288 for r in cached.records[1:])
    assert cached.summary["prefix_hit_tokens"] == 288 * (len(trace) - 1)
    assert cached.summary["ttft_mean_s"] < 0.5 * uncached.summary["ttft_mean_s"]


def test_small_step_budget_keeps_a_long_prompt_from_stalling_decodes():
    short = [Arrival(0.0, list(range(i * 50, i * 50 + 20)), 200) for i in range(4)]
    trace = short + [Arrival(1.0, list(range(1000, 2500)), 4)]

    def worst_gap_of_short_ones(budget: int) -> float:
        result = simulate(SchedulerConfig(max_step_tokens=budget), trace)
        check_complete(result, trace)
        return max(max(r.itls) for r in result.records[:4])

    small, large = worst_gap_of_short_ones(64), worst_gap_of_short_ones(2048)
    cost = CostModel()
    assert large > cost.step_overhead_s + 1400 * cost.per_prefill_token_s          # the whole prompt in one step
    # A step of 4 decodes and at most 64 prompt tokens, reading at most 4 * 220 + 1500 cached positions.
    assert small <= cost.step_overhead_s + 64 * cost.per_prefill_token_s + 4 * cost.per_decode_seq_s \
        + (4 * 220 + 1500) * cost.per_context_token_s + 1e-9
    assert small < large / 3


def test_cost_model_counts_prefill_decode_and_context():
    from llmlab.infer.scheduler import Chunk, Sequence

    cost = CostModel(1.0, 0.1, 0.01, 0.001)
    seq = Sequence("a", list(range(50)), 4)
    assert cost([Chunk(seq, 0, 30)]) == pytest.approx(1.0 + 3.0)
    assert cost([Chunk(seq, 30, 20), Chunk(seq, 49, 1)]) == pytest.approx(1.0 + 2.0 + 0.01 + 0.001 * 79)


def test_table_and_main(capsys):
    trace = poisson_trace(10, 5.0, (8, 30), (2, 6), seed=0)
    text = table({"a": simulate(SchedulerConfig(), trace), "b": simulate(SchedulerConfig(max_batch=1), trace)})
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| config") and lines[2].startswith("| a ")
    assert len({len(line) for line in lines}) == 1
    main(["--requests", "20"])
    out = capsys.readouterr().out
    for name in ("prefill-first", "max_step_tokens 64", "block_size 32", "max_batch 64"):
        assert name in out


def test_refuses_requests_beyond_the_queue_and_contexts_too_long():
    trace = poisson_trace(10, float("inf"), 20, 5, seed=0)
    result = simulate(SchedulerConfig(max_batch=1, max_queue=3), trace)
    assert result.summary["refused"] > 0 and result.free_blocks == result.num_blocks
    assert result.summary["completed"] == 3 and all(r.finish is None for r in result.records[3:])
    with pytest.raises(LLMLabError, match="context"):
        simulate(SchedulerConfig(), [Arrival(0.0, [1] * 100, 50)], context=120)


def test_measure_fits_a_cost_model_to_a_real_model():
    import torch

    from llmlab.model.config import ModelConfig
    from llmlab.model.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, block_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=32))
    cost = CostModel.measure(model, prefill_sizes=(8, 32), decode_batches=(1, 4), contexts=(8, 40), repeats=1)
    values = [cost.step_overhead_s, cost.per_prefill_token_s, cost.per_decode_seq_s, cost.per_context_token_s]
    assert all(v >= 0 for v in values) and 0 < cost.step_overhead_s < 1
