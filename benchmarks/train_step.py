"""Where a training step's time goes: our nanogpt-cpu step vs nanoGPT's, and what closes the gap.

    python benchmarks/train_step.py --nanogpt-dir ~/src/nanoGPT              # 1 thread, 14 blocks of 5 steps
    python benchmarks/train_step.py --nanogpt-dir ~/src/nanoGPT --threads 2 --blocks 20

One process, every variant built once, then timed in blocks of `--steps` optimizer steps with the
order rotating from block to block, so load from other jobs falls on every variant alike. nanoGPT's
step is its train.py loop body (its GPT from the checkout's model.py, its memmap batch, clip,
AdamW, zero_grad); ours is `Trainer.train_step`. Variants of ours, one change at a time:

    preset                 nanogpt-cpu as shipped: nanoGPT's own configuration (no biases, as its
                           train.py's `bias = False`; exact erf GELU, as its nn.GELU) and foreach AdamW
    + per-tensor AdamW     torch's CPU default optimizer loop
    + biases               bias=True (810k parameters, not 804k)
    the preset before      biases, GPT-2's tanh GELU, per-tensor AdamW: what nanogpt-cpu was until 2026-12-01

Prints median and best block per variant and the speed relative to nanoGPT (higher is faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _machine import describe

from llmlab.train.config import PRESETS, DataConfig
from llmlab.train.optim import param_groups
from llmlab.train.run import build
from llmlab.train.trainer import Trainer

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


def ours(data_file: Path, loop_adamw: bool = False, **model_changes):
    run = dataclasses.replace(PRESETS["nanogpt-cpu"], data=DataConfig(data_file=str(data_file)))
    run.model = run.model.replace(**model_changes)
    model, data, device, _ = build(run)
    trainer = Trainer(run, model, data, data.tokenizer, Path(tempfile.mkdtemp()), device)
    if loop_adamw:
        cfg = run.train
        trainer.optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                              betas=(cfg.beta1, cfg.beta2), foreach=False)
    return lambda: trainer.train_step(run.train.lr, False)


def nanogpt(checkout: Path):
    sys.path.insert(0, str(checkout))
    from model import GPT, GPTConfig   # nanoGPT's own model.py, from the checkout
    data_dir = checkout / "data" / "shakespeare_char"
    if not (data_dir / "train.bin").is_file():
        raise SystemExit(f"{data_dir}/train.bin is missing: run benchmarks/train_shakespeare.py --nanogpt-dir "
                         f"{checkout} once (it prepares the data), or its prepare.py")
    model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, bias=False, vocab_size=65, dropout=0.0))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")

    def get_batch():
        data = np.memmap(data_dir / "train.bin", dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - 64, (12,))
        return (torch.stack([torch.from_numpy(data[i:i + 64].astype(np.int64)) for i in ix]),
                torch.stack([torch.from_numpy(data[i + 1:i + 65].astype(np.int64)) for i in ix]))
    state = {"xy": get_batch()}

    def step():
        _, loss = model(*state["xy"])
        state["xy"] = get_batch()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
    return step


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanogpt-dir", type=Path, required=True, help="a nanoGPT checkout")
    p.add_argument("--data-file", type=Path, default=DEFAULT_DATA)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--blocks", type=int, default=14)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sides = {"nanoGPT (its train.py step)": nanogpt(args.nanogpt_dir),
             "llmlab nanogpt-cpu preset": ours(args.data_file),
             "llmlab preset + per-tensor AdamW": ours(args.data_file, loop_adamw=True),
             "llmlab preset + biases": ours(args.data_file, bias=True),
             "llmlab, the preset before (biases, tanh GELU, per-tensor AdamW)":
                 ours(args.data_file, loop_adamw=True, bias=True, mlp="gelu")}
    for step in sides.values():
        for _ in range(5):
            step()
    names, times = list(sides), {n: [] for n in sides}
    for b in range(args.blocks):
        for name in names[b % len(names):] + names[:b % len(names)]:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                sides[name]()
            times[name].append((time.perf_counter() - t0) / args.steps * 1000)
    ref = names[0]
    print(f"\n## nanogpt-cpu training step, {args.blocks} rotating blocks of {args.steps} steps\n\n"
          f"{describe(args.threads)}\n")
    print("| variant | median ms/step | best block ms/step | speed vs nanoGPT (median) | (best) |")
    print("|---|---:|---:|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.1f} | {min(ts):.1f} | "
              f"{statistics.median(times[ref]) / statistics.median(ts):.2f} | {min(times[ref]) / min(ts):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
