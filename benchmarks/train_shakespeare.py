"""Training speed and quality on tinyshakespeare, against nanoGPT's CPU figures.

    python benchmarks/train_shakespeare.py                                   # nanogpt-cpu, 2,000 iterations
    python benchmarks/train_shakespeare.py --preset shakespeare-char --max-time 15m

Reference (nanoGPT itself on a 2-core machine like ours, 2 threads, its documented CPU command):
32 ms/iter, ~24k tokens/s, 0.80M parameters, val loss 1.886 (train 1.765) after 2,000 iterations in
about 80 s. nanoGPT cannot be installed here (it is not a package), so its row is that reference,
not a same-run measurement; the ratio column says how we compare.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from llmlab.core.config import apply_flags
from llmlab.train.config import PRESETS, DataConfig
from llmlab.train.metrics import read_metrics
from llmlab.train.run import start

NANOGPT = {"ms_per_iter": 32.0, "tokens_per_s": 24_000, "val_loss": 1.886, "train_loss": 1.765, "wall_s": 80.0}
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="nanogpt-cpu", choices=list(PRESETS))
    p.add_argument("--data-file", default=str(DEFAULT_DATA), help="tinyshakespeare.txt")
    p.add_argument("--max-iters", type=int, help="default: the preset's")
    p.add_argument("--max-time", help="wall-time budget, e.g. 15m")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--out", type=Path, help="run directory (default: benchmarks/.cache/runs/<preset>)")
    args = p.parse_args()
    if not Path(args.data_file).is_file():
        print(f"error: {args.data_file} not found; pass --data-file tinyshakespeare.txt", file=sys.stderr)
        return 2

    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    overrides = argparse.Namespace(threads=args.threads, compile=args.compile, tensorboard=False,
                                   **({"max_iters": args.max_iters} if args.max_iters else {}),
                                   **({"max_time": args.max_time} if args.max_time else {}))
    run = dataclasses.replace(preset, data=DataConfig(data_file=args.data_file),
                              train=apply_flags(preset.train, overrides))
    out = args.out or Path(__file__).parent / ".cache" / "runs" / args.preset
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    state = start(run, out)
    wall = time.perf_counter() - t0

    rows = read_metrics(out)
    evals = [r for r in rows if r.get("val_loss") is not None]
    step_rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    tokens_per_step = run.train.batch_size * run.train.grad_accum * run.model.block_size
    ms_per_iter = 1000 * state.elapsed_s / state.step
    ours = {"ms_per_iter": ms_per_iter, "tokens_per_s": tokens_per_step / (ms_per_iter / 1000),
            "val_loss": evals[-1]["val_loss"], "train_loss": evals[-1]["train_eval_loss"], "wall_s": wall}
    mfu = statistics.median(r["mfu"] for r in rows if "mfu" in r)
    print(f"\n## {args.preset} on {Path(args.data_file).name}: {state.step} iterations, {args.threads} threads\n")
    print(f"median per-step throughput {statistics.median(step_rates):,.0f} tokens/s; median MFU {100 * mfu:.1f}% "
          "(CPU: relative to a measured float32 matmul peak); best val "
          f"{state.best_val:.4f}; wall time includes evaluation and checkpoints\n")
    print("| metric | llmlab | nanoGPT (reference) | llmlab / nanoGPT |")
    print("|---|---|---|---|")
    for key, better in (("ms_per_iter", "lower"), ("tokens_per_s", "higher"), ("train_loss", "lower"),
                        ("val_loss", "lower"), ("wall_s", "lower")):
        ref = NANOGPT[key] if args.preset == "nanogpt-cpu" else None
        ratio = f"{ours[key] / ref:.2f} ({better} is better)" if ref else "-"
        fmt = (lambda v: f"{v:,.0f}") if key == "tokens_per_s" else (lambda v: f"{v:.3f}")
        print(f"| {key} | {fmt(ours[key])} | {fmt(ref) if ref else '-'} | {ratio} |")
    print(f"\nrun directory: {out} (loss.png, metrics.jsonl, samples.txt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
