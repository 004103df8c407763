"""Where the compiled decode step's speed comes from, one step at a time (docs/03-inference.md).

    python benchmarks/decode_ablation.py               # eager, steps 1+2+4 (SDPA kept), all four steps
    python benchmarks/decode_ablation.py --profile     # plus the torch profile of an eager decode step

On SmolLM2-135M, a 512-token prompt, then `--new` greedy tokens, in one process with the variants
interleaved (ABAB) over `--rounds` rounds. The steps are those of llmlab.infer.compiled_decode:
1 static KV cache, 2 reduction-form matvecs, 3 attention written out for one-token steps
(`Attention.explicit_decode`), 4 torch.compile of `run_model`. Each variant's compile is timed
apart (`CompiledDecode.prepare`) and is not part of its tokens/s. `--profile` prints the top
operators of eager decode steps and the share of time in `aten::mm`/`aten::addmm` (the library's
batch-1 matrix-vector products).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from _machine import describe

from inference import prompt_text  # the same ~512-token prompt as benchmarks/inference.py

from llmlab.infer import Engine, SamplingConfig
from llmlab.infer.compiled_decode import CompiledDecode, warm_up
from llmlab.infer.generate import cache_length
from llmlab.model.transformer import Attention


def set_explicit(model: torch.nn.Module, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, Attention):
            m.explicit_decode = on


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine.load("smollm2", device="cpu", dtype=args.dtype)
    ids = engine.tokenizer.encode(prompt_text())[:512]
    config = SamplingConfig(max_new_tokens=args.new, temperature=0, ignore_eos=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        engine.generate(ids, SamplingConfig(max_new_tokens=4, temperature=0, ignore_eos=True))
        short = SamplingConfig(max_new_tokens=16, temperature=0, ignore_eos=True)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            engine.generate(ids, short)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        mm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm"))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
        print(f"eager generate (512-token prefill + 16 decode steps): {100 * mm / total:.0f}% of self CPU time "
              "in aten::mm / aten::addmm\n")
    step = CompiledDecode(engine.model)            # steps 2 (matvecs) and 3 (explicit attention) applied
    slots = cache_length(len(ids) + args.new, engine.model.config.block_size, static=True)
    compile_s = {}
    # dynamo guards on the module flag, so each setting gets its own graph and both stay cached
    set_explicit(engine.model, False)
    compile_s["1+2+4 (SDPA kept)"] = warm_up(engine.model, step.fn, 1, slots)
    set_explicit(engine.model, True)
    compile_s["1+2+3+4 (all)"] = warm_up(engine.model, step.fn, 1, slots)
    variants = {"eager": (None, False), "1+2+4 (SDPA kept)": (step, False), "1+2+3+4 (all)": (step, True)}
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            fn, explicit = variants[name]
            if explicit is not None:
                set_explicit(engine.model, explicit)
            engine.decode_fn = fn
            rates[name].append(engine.generate(ids, config).timings["decode_tok_s"])
            print(f"round {r + 1}: {name}: {rates[name][-1]:.1f} tok/s", file=sys.stderr)
    print(f"\n## decode ablation, SmolLM2-135M {args.dtype}, 512-token prompt, {args.new} new tokens, "
          f"median of {args.rounds}\n\n{describe(args.threads)}\n")
    print("| variant | compile s | decode tok/s | vs eager |\n|---|---:|---:|---:|")
    base = statistics.median(rates["eager"])
    for name, rs in rates.items():
        m = statistics.median(rs)
        print(f"| {name} | {compile_s.get(name, 0):.0f} | {m:.1f} | {m / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
