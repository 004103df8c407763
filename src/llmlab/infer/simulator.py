"""A virtual-clock simulator of continuous batching: compare scheduler settings in milliseconds, without a model.

Which policy, step token budget (chunk size), KV block size or batch cap serves a load best depends
on the load, and each point costs minutes on a real model. Here the real `Scheduler`
(llmlab.infer.scheduler, the class the engine uses) plans every step, a `CostModel` says how long
the model would take to run it, and a virtual clock moves by that much: a trace of a hundred
requests takes milliseconds, and the same trace always gives the same numbers.

    trace = poisson_trace(100, rate_per_s=0.3, prompt_len=(32, 512), output_len=(16, 128), seed=0)
    print(table({"batch 1": simulate(SchedulerConfig(max_batch=1), trace),
                 "batch 16": simulate(SchedulerConfig(max_batch=16), trace)}))
    python -m llmlab.infer.simulator            # policies, chunk sizes, block sizes, batch caps

A step's cost is linear in what it packs, the shape of a memory-bound decoder's forward pass:
    step_overhead_s                               reading every weight once, whatever the batch
    + per_prefill_token_s * prompt tokens         compute per prompt token (chunks longer than 1)
    + per_decode_seq_s * decode rows              compute (and logits) per one-token row
    + per_context_token_s * cached positions read attention gathering each chunk's cached keys
Cheap per row, dear per step: that is why batching pays (Orca, Yu et al. OSDI 2022). It leaves out
the host's own planning time and non-linear effects (attention's quadratic cost inside a long chunk,
kernel changes with batch size). Fit it to a model with `CostModel.measure`, and trust comparisons
between settings more than absolute figures.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np

from llmlab.core.errors import LLMLabError
from llmlab.infer.scheduler import Chunk, Scheduler, SchedulerConfig, Sequence


@dataclass(frozen=True)
class CostModel:
    # Defaults measured by CostModel.measure(Engine.load("smollm2"), repeats=5): SmolLM2-135M fp32 on
    # 2 threads of an AMD EPYC (torch 2.13, 2026-12-01, a quiet machine; fits on a shared one moved ~20%).
    # Decode is memory-bound: a step costs ~96 ms whatever its batch, and ~5 ms more per row.
    step_overhead_s: float = 0.096
    per_prefill_token_s: float = 0.0022
    per_decode_seq_s: float = 0.0049
    per_context_token_s: float = 0.0000166

    def __call__(self, chunks: list[Chunk]) -> float:
        """Seconds one step of these chunks takes."""
        decode_rows = sum(1 for c in chunks if c.length == 1)          # the paged cache's own split
        prefill_tokens = sum(c.length for c in chunks if c.length > 1)
        context = sum(c.start for c in chunks)
        return (self.step_overhead_s + self.per_prefill_token_s * prefill_tokens
                + self.per_decode_seq_s * decode_rows + self.per_context_token_s * context)

    @classmethod
    def measure(cls, engine_or_model, prefill_sizes: tuple[int, ...] = (32, 128, 384),
                decode_batches: tuple[int, ...] = (1, 4, 16), contexts: tuple[int, ...] = (64, 512),
                repeats: int = 3) -> "CostModel":
        """Time real steps of a model (an Engine or a Transformer) on a paged cache -- prefill-only
        steps of each size, decode-only steps of each batch at each context, the median of `repeats`
        after a warm-up -- and fit the four constants by least squares."""
        import torch

        from llmlab.infer.paged_cache import PagedKVCache

        model = getattr(engine_or_model, "model", engine_or_model).eval()
        c, weight, bs = model.config, next(model.parameters()), 16
        per_seq = math.ceil((max(*contexts, *prefill_sizes) + 1) / bs)
        cache = PagedKVCache(c.n_layer, per_seq * max(decode_batches), bs, c.n_kv_head, c.head_dim,
                             weight.dtype, weight.device)

        def seq(i: int, length: int) -> Sequence:          # the i-th of a step's sequences, on its own blocks
            return Sequence(f"m{i}", [0] * length, 0,
                            blocks=list(range(i * per_seq, i * per_seq + math.ceil(length / bs))))

        shapes = [[Chunk(seq(0, n), 0, n)] for n in prefill_sizes]
        shapes += [[Chunk(seq(i, ctx + 1), ctx, 1) for i in range(b)] for b in decode_batches for ctx in contexts]
        rows = [[1, n, 0, 0] for n in prefill_sizes] + [[1, 0, b, b * ctx] for b in decode_batches for ctx in contexts]
        # Rounds over all shapes (ABAB...), a warm-up round first, the median per shape: a burst of
        # other load on the machine then spreads over every shape instead of skewing one.
        times = np.zeros((repeats + 1, len(shapes)))
        with torch.no_grad():
            for r, (i, chunks) in itertools.product(range(repeats + 1), enumerate(shapes)):
                positions = cache.prepare(chunks)
                ids = torch.zeros(1, positions.size(1), dtype=torch.long, device=weight.device)
                ends = torch.zeros(1, positions.size(1), dtype=torch.bool, device=weight.device)
                ends[0, np.cumsum([ch.length for ch in chunks]) - 1] = True
                t0 = time.perf_counter()
                model(ids, positions=positions, kv_cache=cache, logits_mask=ends)
                if weight.device.type == "cuda":
                    torch.cuda.synchronize()
                times[r, i] = time.perf_counter() - t0
        times = np.median(times[1:], axis=0)
        coef = np.linalg.lstsq(np.array(rows, dtype=float), np.array(times), rcond=None)[0]
        return cls(*(max(float(x), 0.0) for x in coef))     # a slightly negative fit is noise


@dataclass
class Arrival:
    time: float
    prompt: list[int]
    max_tokens: int


def _bounds(name: str, value: int | tuple[int, int]) -> tuple[int, int]:
    lo, hi = (value, value) if isinstance(value, int) else value
    if not 1 <= lo <= hi:
        raise LLMLabError(f"{name}={value!r}: give a length of at least 1, or (lo, hi) with 1 <= lo <= hi")
    return lo, hi


def poisson_trace(n: int, rate_per_s: float, prompt_len: int | tuple[int, int], output_len: int | tuple[int, int],
                  seed: int = 0, shared_prefix: int = 0, vocab_size: int = 32000) -> list[Arrival]:
    """n requests arriving as a Poisson process (exponential gaps of mean 1/rate_per_s; inf: all at
    time 0), lengths uniform in [lo, hi], prompt tokens uniform below vocab_size. The first
    `shared_prefix` tokens are the same in every prompt (a system prompt), for prefix caching."""
    (p_lo, p_hi), (o_lo, o_hi) = _bounds("prompt_len", prompt_len), _bounds("output_len", output_len)
    if not rate_per_s > 0:
        raise LLMLabError(f"rate_per_s={rate_per_s}: give a positive arrival rate (inf: all at once)")
    if not 0 <= shared_prefix < p_lo:
        raise LLMLabError(f"shared_prefix={shared_prefix}: give 0 or more, shorter than the shortest prompt ({p_lo})")
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1 / rate_per_s, n) if math.isfinite(rate_per_s) else np.zeros(n)
    prefix = rng.integers(0, vocab_size, shared_prefix).tolist()
    trace = []
    for t in np.cumsum(gaps):
        length = int(rng.integers(p_lo, p_hi + 1))
        own = rng.integers(0, vocab_size, length - shared_prefix).tolist()
        trace.append(Arrival(float(t), prefix + own, int(rng.integers(o_lo, o_hi + 1))))
    return trace


@dataclass
class RequestRecord:
    request_id: str
    arrival: float
    prompt_tokens: int
    max_tokens: int
    started: float | None = None        # start of the first step that ran any of its tokens
    token_times: list[float] = field(default_factory=list)   # when each output token was sampled
    finish: float | None = None         # None: refused, the queue held max_queue requests
    preemptions: int = 0
    cached_tokens: int = 0              # prompt tokens the prefix cache served

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.arrival

    @property
    def e2e(self) -> float:
        return self.finish - self.arrival

    @property
    def itls(self) -> list[float]:
        return np.diff(self.token_times).tolist()

    @property
    def tpot(self) -> float:
        """Mean time per output token after the first."""
        n = len(self.token_times)
        return (self.token_times[-1] - self.token_times[0]) / (n - 1) if n > 1 else 0.0


@dataclass
class SimResult:
    records: list[RequestRecord]
    summary: dict[str, float]
    num_blocks: int
    free_blocks: int                    # at the end: num_blocks, unless blocks leaked


def simulate(config: SchedulerConfig, trace: list[Arrival], cost: CostModel | None = None, context: int = 2048,
             num_blocks: int | None = None) -> SimResult:
    """Serve `trace` with a Scheduler on a virtual clock; each step takes cost(plan) seconds."""
    cost = cost or CostModel()
    num_blocks = num_blocks or config.pool_blocks(context)
    scheduler = Scheduler(config, num_blocks)
    records = [RequestRecord(f"req-{i}", a.time, len(a.prompt), a.max_tokens) for i, a in enumerate(trace)]
    order = sorted(range(len(trace)), key=lambda i: trace[i].time)
    # Fake output tokens count up from above every prompt token: no output looks like a prompt to
    # the prefix cache, and the same trace gets the same tokens.
    fake_tokens = itertools.count(1 + max((max(a.prompt) for a in trace if a.prompt), default=0))
    clock, steps, arrived = 0.0, 0, 0
    while arrived < len(order) or scheduler.has_work():
        while arrived < len(order) and trace[order[arrived]].time <= clock:
            a, record = trace[order[arrived]], records[order[arrived]]
            arrived += 1
            if not a.prompt or a.max_tokens < 1 or len(a.prompt) + a.max_tokens > context:
                raise LLMLabError(f"{record.request_id}: prompt ({len(a.prompt)} tokens) + max_tokens ({a.max_tokens}) "
                                  f"must both be at least 1 and fit the context ({context})")
            if len(scheduler.waiting) >= config.max_queue:
                continue                                     # refused, as a server answers 429
            try:
                scheduler.add(Sequence(record.request_id, list(a.prompt), a.max_tokens, payload=record))
            except ValueError as e:
                raise LLMLabError(f"{record.request_id}: {e}; give more num_blocks") from None
        if not scheduler.has_work():
            clock = max(clock, trace[order[arrived]].time)   # idle: jump to the next arrival
            continue
        plan = scheduler.schedule()
        if not plan:
            raise RuntimeError("the scheduler planned an empty step while it has work (a scheduler bug)")
        start, clock, steps = clock, clock + cost(plan), steps + 1
        for chunk in plan:
            scheduler.advance(chunk)
            seq, record = chunk.sequence, chunk.sequence.payload
            record.started = start if record.started is None else record.started
            if chunk.sample:
                seq.output.append(next(fake_tokens))
                record.token_times.append(clock)
                if len(seq.output) == seq.max_tokens:
                    scheduler.finish(seq)
                    record.finish, record.preemptions, record.cached_tokens = clock, seq.preemptions, seq.cached_tokens
    return SimResult(records, _summarize(records, steps), num_blocks, scheduler.blocks.num_free)


def _summarize(records: list[RequestRecord], steps: int) -> dict[str, float]:
    done = [r for r in records if r.finish is not None]
    span = max(r.finish for r in done) - min(r.arrival for r in done) if done else 0.0
    itls = [gap for r in done for gap in r.itls] or [0.0]

    def stats(name: str, values: list[float]) -> dict[str, float]:
        values = values or [0.0]
        return {f"{name}_mean_s": float(np.mean(values)), f"{name}_p50_s": float(np.percentile(values, 50)),
                f"{name}_p95_s": float(np.percentile(values, 95))}

    return {"completed": len(done), "refused": len(records) - len(done),
            "throughput_tok_s": sum(len(r.token_times) for r in done) / span if span else 0.0,
            "requests_s": len(done) / span if span else 0.0,
            **stats("ttft", [r.ttft for r in done]), "tpot_mean_s": float(np.mean([r.tpot for r in done] or [0.0])),
            "itl_p50_s": float(np.percentile(itls, 50)), "itl_p95_s": float(np.percentile(itls, 95)),
            "itl_max_s": max(itls), **stats("e2e", [r.e2e for r in done]),
            "preemptions": sum(r.preemptions for r in done), "prefix_hit_tokens": sum(r.cached_tokens for r in done),
            "steps": steps}


_COLUMNS = [("tok/s", "throughput_tok_s", 1, ".1f"), ("req/s", "requests_s", 1, ".2f"),
            ("TTFT mean ms", "ttft_mean_s", 1e3, ".0f"), ("TTFT p50", "ttft_p50_s", 1e3, ".0f"),
            ("TTFT p95", "ttft_p95_s", 1e3, ".0f"), ("TPOT ms", "tpot_mean_s", 1e3, ".1f"),
            ("ITL p50", "itl_p50_s", 1e3, ".0f"), ("ITL p95", "itl_p95_s", 1e3, ".0f"),
            ("ITL max", "itl_max_s", 1e3, ".0f"), ("e2e mean s", "e2e_mean_s", 1, ".1f"),
            ("e2e p95", "e2e_p95_s", 1, ".1f"),
            ("preempt", "preemptions", 1, "d"), ("cached tok", "prefix_hit_tokens", 1, "d"), ("steps", "steps", 1, "d")]


def table(results: dict[str, SimResult]) -> str:
    """A Markdown table comparing the summaries, one row per named result."""
    header = ["config"] + [c[0] for c in _COLUMNS]
    rows = [[name] + [format(r.summary[key] * scale, fmt) for _, key, scale, fmt in _COLUMNS]
            for name, r in results.items()]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                           for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule] + [line(row) for row in rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmlab.infer.simulator",
                                     description="Compare scheduler settings on one Poisson trace (virtual clock).")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--rate", type=float, default=0.3, help="arrivals per second")
    parser.add_argument("--prompt-len", type=int, nargs=2, default=(32, 512), metavar=("LO", "HI"))
    parser.add_argument("--output-len", type=int, nargs=2, default=(16, 128), metavar=("LO", "HI"))
    parser.add_argument("--shared-prefix", type=int, default=24, help="prompt tokens every request shares (a system "
                        "prompt): only whole blocks of it are shared, so block size shows here")
    parser.add_argument("--kv-tokens", type=int, default=4096, help="KV cache size in token slots, the same memory "
                        "for every setting (num_blocks = kv_tokens // block_size)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    trace = poisson_trace(args.requests, args.rate, tuple(args.prompt_len), tuple(args.output_len), args.seed,
                          args.shared_prefix)
    base, cost = SchedulerConfig(), CostModel()
    variants = {"decode-first (default)": base, "prefill-first": replace(base, policy="prefill-first")}
    variants |= {f"max_step_tokens {n}": replace(base, max_step_tokens=n) for n in (64, 1024)}
    variants |= {f"block_size {n}": replace(base, block_size=n) for n in (8, 32)}
    variants |= {f"max_batch {n}": replace(base, max_batch=n) for n in (1, 4, 64)}
    t0 = time.perf_counter()
    results = {name: simulate(config, trace, cost, num_blocks=args.kv_tokens // config.block_size)
               for name, config in variants.items()}
    print(f"{args.requests} requests, Poisson {args.rate}/s, prompt/output tokens {args.prompt_len}/"
          f"{args.output_len}, shared prefix {args.shared_prefix}, KV {args.kv_tokens} tokens. "
          f"Each row changes one setting of the default (decode-first, max_step_tokens {base.max_step_tokens}, "
          f"block_size {base.block_size}, max_batch {base.max_batch}). {cost}")
    print(table(results))
    print(f"({len(results)} simulations in {time.perf_counter() - t0:.2f} s)")


if __name__ == "__main__":
    main()
