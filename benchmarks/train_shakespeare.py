"""Training speed and quality on tinyshakespeare, against nanoGPT run in the same benchmark.

    python benchmarks/train_shakespeare.py --nanogpt-dir ~/src/nanoGPT       # both, ABAB, 2,000 iterations
    python benchmarks/train_shakespeare.py --nanogpt-dir ~/src/nanoGPT --rounds 2 --max-iters 500
    python benchmarks/train_shakespeare.py --preset shakespeare-char --max-time 15m   # ours only

With --nanogpt-dir (a checkout of github.com/karpathy/nanoGPT), its own train.py runs its documented
CPU command (README, "I only have a macbook"):

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
        --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
        --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

in a subprocess limited to the same thread count (OMP_NUM_THREADS), alternating with ours (round 1:
nanoGPT then llmlab, round 2: llmlab then nanoGPT, ...), so both see the same machine load. Its
shakespeare_char data is prepared once from --data-file by its own prepare.py (which downloads
only when input.txt is missing). Without a checkout, nanoGPT's column holds figures quoted from an
earlier measurement and is labelled so: a quote is not a same-run comparison.

Step time is the median per-iteration time of each side's own log (ours: metrics.jsonl; nanoGPT:
its "time ...ms" lines), and ms/iter all-in is the whole loop including evaluations divided by the
iterations. Ratios are llmlab / nanoGPT.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _machine import describe

from llmlab.core.config import apply_flags
from llmlab.train.config import PRESETS, DataConfig
from llmlab.train.metrics import read_metrics
from llmlab.train.run import start

# Quoted, not measured in this run: nanoGPT on a 2-core machine like ours, 2 threads, its CPU command.
NANOGPT_QUOTED = {"step_ms": 32.0, "ms_per_iter": 32.0, "val_loss": 1.886, "train_loss": 1.765, "wall_s": 80.0}
NANOGPT_FLAGS = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
                 "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0"]
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"
TOKENS_PER_ITER = 12 * 64


def run_nanogpt(checkout: Path, data_file: Path, iters: int, threads: int) -> dict:
    data_dir = checkout / "data" / "shakespeare_char"
    if not (data_dir / "train.bin").is_file():
        if not (data_dir / "input.txt").is_file():
            shutil.copyfile(data_file, data_dir / "input.txt")     # its prepare.py then does not download
        subprocess.run([sys.executable, "prepare.py"], cwd=data_dir, check=True, capture_output=True)
    out_dir = tempfile.mkdtemp(prefix="nanogpt-out-")
    cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", *NANOGPT_FLAGS,
           f"--max_iters={iters}", f"--lr_decay_iters={iters}", f"--out_dir={out_dir}",
           # it evaluates only at multiples of eval_interval (250): make `iters` one, as ours evaluates at the end
           f"--eval_interval={250 if iters % 250 == 0 else iters}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(cmd, cwd=checkout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    began, step_ms, evals, tail = None, [], [], []
    for line in proc.stdout:
        tail = (tail + [line])[-5:]
        if began is None and line.startswith("tokens per iteration"):
            began = time.perf_counter()   # after its imports, before data/model setup: as ours below
        if m := re.match(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", line):
            step_ms.append(float(m.group(2)))
        elif m := re.match(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", line):
            evals.append((int(m.group(1)), float(m.group(2)), float(m.group(3))))
    if proc.wait() != 0 or not evals or began is None:
        raise RuntimeError(f"nanoGPT's train.py failed ({' '.join(cmd)}):\n{''.join(tail)}")
    shutil.rmtree(out_dir, ignore_errors=True)
    wall = time.perf_counter() - began
    # iteration 0's time includes the first evaluation; the median ignores it and the other evals
    return {"step_ms": statistics.median(step_ms[1:]), "ms_per_iter": sum(step_ms) / len(step_ms),
            "val_loss": evals[-1][2], "train_loss": evals[-1][1], "wall_s": wall, "iters": evals[-1][0]}


def run_llmlab(args, out: Path) -> dict:
    preset = PRESETS[args.preset]
    overrides = argparse.Namespace(threads=args.threads, compile=args.compile, tensorboard=False,
                                   **({"max_iters": args.max_iters} if args.max_iters else {}),
                                   **({"lr_decay_iters": args.max_iters} if args.max_iters else {}),
                                   **({"max_time": args.max_time} if args.max_time else {}))
    run = dataclasses.replace(preset, data=DataConfig(data_file=str(args.data_file)),
                              train=apply_flags(preset.train, overrides))
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    state = start(run, out)
    wall = time.perf_counter() - t0
    rows = read_metrics(out)
    evals = [r for r in rows if r.get("val_loss") is not None]
    tokens_per_step = run.train.batch_size * run.train.grad_accum * run.seq_len
    step_ms = [1000 * tokens_per_step / r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
    return {"step_ms": statistics.median(step_ms), "ms_per_iter": 1000 * state.elapsed_s / state.step,
            "val_loss": evals[-1]["val_loss"], "train_loss": evals[-1]["train_eval_loss"], "wall_s": wall,
            "iters": state.step, "mfu": statistics.median(r["mfu"] for r in rows if "mfu" in r),
            "best_val": state.best_val}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="nanogpt-cpu", choices=list(PRESETS))
    p.add_argument("--data-file", type=Path, default=DEFAULT_DATA, help="tinyshakespeare.txt")
    p.add_argument("--nanogpt-dir", type=Path, help="a nanoGPT checkout: run its train.py in the same benchmark")
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds (ABAB); medians are reported")
    p.add_argument("--max-iters", type=int, help="default: the preset's (nanogpt-cpu: 2,000)")
    p.add_argument("--max-time", help="wall-time budget for ours, e.g. 15m")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--out", type=Path, help="run directory (default: benchmarks/.cache/runs/<preset>)")
    args = p.parse_args()
    if not args.data_file.is_file():
        print(f"error: {args.data_file} not found; pass --data-file tinyshakespeare.txt", file=sys.stderr)
        return 2
    if args.nanogpt_dir and not (args.nanogpt_dir / "train.py").is_file():
        print(f"error: {args.nanogpt_dir} has no train.py; pass a nanoGPT checkout", file=sys.stderr)
        return 2
    if args.nanogpt_dir and args.preset != "nanogpt-cpu":
        print("error: nanoGPT runs its CPU configuration; use --preset nanogpt-cpu with --nanogpt-dir", file=sys.stderr)
        return 2

    torch.set_num_threads(args.threads)
    out = args.out or Path(__file__).parent / ".cache" / "runs" / args.preset
    iters = args.max_iters or PRESETS[args.preset].train.max_iters
    header = describe(args.threads)
    ours, theirs = [], []
    for r in range(args.rounds):
        order = ("nanogpt", "llmlab") if r % 2 == 0 else ("llmlab", "nanogpt")
        for side in order:
            if side == "llmlab":
                ours.append(run_llmlab(args, out))
                print(f"round {r + 1}: llmlab {ours[-1]}", file=sys.stderr)
            elif args.nanogpt_dir:
                theirs.append(run_nanogpt(args.nanogpt_dir, args.data_file, iters, args.threads))
                print(f"round {r + 1}: nanoGPT {theirs[-1]}", file=sys.stderr)

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    measured = bool(theirs)
    ref = {k: med(theirs, k) for k in NANOGPT_QUOTED} if measured else \
        (NANOGPT_QUOTED if args.preset == "nanogpt-cpu" else None)
    label = (f"nanoGPT (its train.py, this run, median of {len(theirs)})" if measured
             else "nanoGPT (quoted figures, not run: pass --nanogpt-dir)")
    print(f"\n## {args.preset} on {args.data_file.name}: {ours[-1]['iters']} iterations, "
          f"median of {len(ours)} round(s)\n\n{header}\n")
    print(f"llmlab median MFU {100 * med(ours, 'mfu'):.1f}% (CPU: of a measured float32 matmul peak); "
          f"best val {min(o['best_val'] for o in ours):.4f}\n")
    print(f"| metric | llmlab | {label} | llmlab / nanoGPT |")
    print("|---|---|---|---|")
    for key, note in (("step_ms", "median step, ms (lower is better)"), ("ms_per_iter", "ms/iter all-in, with evals"),
                      ("tokens_per_s", "tokens/s at the median step (higher is better)"),
                      ("train_loss", "train loss at the end"), ("val_loss", "val loss at the end"),
                      ("wall_s", "wall time, s")):
        if key == "tokens_per_s":
            mine, theirs_v = 1000 * TOKENS_PER_ITER / med(ours, "step_ms"), \
                (1000 * TOKENS_PER_ITER / ref["step_ms"] if ref else None)
        else:
            mine, theirs_v = med(ours, key), (ref[key] if ref else None)
        fmt = (lambda v: f"{v:,.0f}") if key in ("tokens_per_s",) else (lambda v: f"{v:.3f}")
        ratio = f"{mine / theirs_v:.2f}" if theirs_v else "-"
        print(f"| {note} | {fmt(mine)} | {fmt(theirs_v) if theirs_v else '-'} | {ratio} |")
    print(f"\nrun directory: {out} (loss.png, metrics.jsonl, samples.txt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
