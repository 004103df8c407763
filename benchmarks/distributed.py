"""Training throughput with 1 process and with N processes under torchrun (DDP and FSDP2), and what
the gradient all-reduce costs by itself.

    .venv/bin/python benchmarks/distributed.py                  # CPU: 1 process x 2 threads, 2 x 1, DDP and FSDP2
    .venv/bin/python benchmarks/distributed.py --steps 60 --json
    .venv/bin/python benchmarks/distributed.py --preset gpt2-124m --data shakespeare   # on a GPU machine

Each row is a real `llmlab train` run (the shakespeare-char preset by default, the same global batch
in every row), read back from its metrics.jsonl: the median tokens/s and MFU over the steps after
the first 10 (warm-up), and on CUDA the peak memory per GPU. The all-reduce row times
`dist.all_reduce` of a float32 buffer the size of the model's gradients, alone, between the same
processes: the communication every DDP step adds (FSDP2 moves about 1.5x as many bytes: an
all-gather of the parameters forward and backward plus a reduce-scatter of the gradients).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import describe

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="shakespeare-char", help="llmlab train preset")
    p.add_argument("--data", default="shakespeare-tiny", help="llmlab train --data")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    p.add_argument("--processes", type=int, default=2, help="processes for the torchrun rows (GPUs on CUDA)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--allreduce-worker", type=int, default=0, help=argparse.SUPPRESS)   # internal: numel
    return p.parse_args(argv)


def run_training(args: argparse.Namespace, processes: int, threads: int, parallel: str, scratch: Path) -> dict:
    out = scratch / f"{parallel}-{processes}x{threads}"
    train = ["-m", "llmlab", "train", "--preset", args.preset, "--data", args.data, "--max-iters", str(args.steps),
             "--eval-every", str(10 * args.steps), "--log-every", "1", "--diag-every", "0", "--sample-tokens", "0",
             "--tensorboard", "false", "--threads", str(threads), "--parallel", parallel, "--out", str(out)]
    launcher = [sys.executable] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    done = subprocess.run(launcher + train, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{parallel} x{processes} failed:\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in rows if r["step"] > 10 and "tokens_per_s" in r] or rows
    return {"processes": processes, "threads_per_process": threads, "parallel": parallel,
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
            "mfu": statistics.median(r["mfu"] for r in steady),
            "max_memory_gb": max((r.get("max_memory_gb", 0.0) for r in rows), default=0.0),
            "final_loss": rows[-1]["train_loss"], "wall_s": time.perf_counter() - t0}


def gradient_numel(preset: str) -> int:
    """Parameters of the preset's model (the gradient buffer DDP all-reduces each step), counted on
    the meta device; a character vocabulary of 79 (the plays') when the preset leaves it open."""
    from llmlab.core.config import get_preset
    from llmlab.model.transformer import Transformer
    from llmlab.train.config import PRESETS

    model = get_preset(PRESETS, preset).model
    return Transformer.skeleton(model.replace(vocab_size=model.vocab_size or 79)).num_params()


def allreduce_worker(numel: int) -> None:
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    buffer = torch.ones(numel, device=device)
    for _ in range(3):
        dist.all_reduce(buffer)
    times = []
    for _ in range(20):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        dist.all_reduce(buffer)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if dist.get_rank() == 0:
        print(json.dumps({"numel": numel, "bytes": 4 * numel, "processes": dist.get_world_size(),
                          "median_s": statistics.median(times)}))
    dist.destroy_process_group()


def time_allreduce(args: argparse.Namespace, numel: int) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(args.processes), str(Path(__file__).resolve()), "--allreduce-worker", str(numel)]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"all-reduce timing failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if cuda:
            rows = [run_training(args, 1, 1, "none", scratch),
                    run_training(args, args.processes, 1, "ddp", scratch),
                    run_training(args, args.processes, 1, "fsdp", scratch)]
        else:
            per = max(1, cores // args.processes)
            rows = [run_training(args, 1, cores, "none", scratch),
                    run_training(args, 1, per, "none", scratch),
                    run_training(args, args.processes, per, "ddp", scratch),
                    run_training(args, args.processes, per, "fsdp", scratch)]
    numel = gradient_numel(args.preset)
    return {"machine": describe(), "cuda": cuda, "preset": args.preset, "steps": args.steps, "rows": rows,
            "allreduce": time_allreduce(args, numel)}


def print_tables(result: dict) -> None:
    print(f"# {result['machine']}; {result['preset']}, {result['steps']} steps per row, same global batch")
    base = result["rows"][0]["tokens_per_s"]
    print(f"{'processes x threads':<20} {'parallel':<8} {'tokens/s':>10} {'x first row':>11} {'MFU':>7} "
          f"{'GB/GPU':>7} {'final loss':>10}")
    for r in result["rows"]:
        print(f"{r['processes']} x {r['threads_per_process']:<16} {r['parallel']:<8} {r['tokens_per_s']:>10,.0f} "
              f"{r['tokens_per_s'] / base:>11.2f} {100 * r['mfu']:>6.1f}% {r['max_memory_gb']:>7.2f} "
              f"{r['final_loss']:>10.4f}")
    a = result["allreduce"]
    print(f"all-reduce of the gradients alone ({a['bytes'] / 1e6:.1f} MB float32, {a['processes']} processes): "
          f"{1000 * a['median_s']:.2f} ms per step")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.allreduce_worker:
        allreduce_worker(args.allreduce_worker)
        return 0
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print_tables(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
