"""Two gloo processes under torchrun train exactly what one process trains with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["--preset", "shakespeare-char", "--data", "shakespeare-tiny", "--n-layer", "2", "--n-embd", "32",
        "--n-head", "2", "--block-size", "32", "--batch-size", "8", "--max-iters", "6", "--eval-every", "3",
        "--eval-iters", "2", "--log-every", "1", "--sample-tokens", "0", "--tensorboard", "false", "--threads", "1",
        "--warmup-iters", "2"]


def losses(run: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def train(out: Path, *extra: str, processes: int = 1) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, "-m", "llmlab", "train"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--standalone", "-m", "llmlab", "train"]
    where = ["--resume", str(out)] if "--resume" in extra else TINY + ["--out", str(out)]
    extra = [e for e in extra if e != "--resume"]
    done = subprocess.run(command + where + extra, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("accum", [1, 2])
def test_ddp_losses_equal_one_process_with_the_same_global_batch(tmp_path, accum):
    one = train(tmp_path / "one", "--grad-accum", str(accum))
    two = train(tmp_path / "two", "--grad-accum", str(accum), processes=2)
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5, (a, b)
        assert a["target_tokens"] == b["target_tokens"] == 8 * accum * 32     # the global batch, counted once
        if "val_loss" in a:
            assert abs(a["val_loss"] - b["val_loss"]) < 1e-5
    facts = json.loads((tmp_path / "two" / "config.json").read_text())["parallel"]
    assert facts == {"mode": "ddp", "world_size": 2, "backend": "gloo", "per_rank_batch": 4, "grad_accum": accum,
                     "global_batch": 8 * accum, "global_batch_tokens": 8 * accum * 32}


@pytest.mark.slow
def test_fsdp_equals_one_process_and_resumes_at_another_world_size(tmp_path):
    """FSDP2 on 2 processes trains what 1 process trains; its sharded checkpoint continues on 1
    process, and that run's checkpoint continues on 2, each with the losses of a run never stopped."""
    schedule = ["--lr-decay-iters", "6", "--ckpt-every", "3"]
    reference = tmp_path / "reference"
    train(reference, *schedule)                                             # 6 steps, 1 process
    train(reference, "--resume", "--max-iters", "9")                         # and 3 more
    moved = tmp_path / "moved"
    train(moved, *schedule, "--max-iters", "3", "--parallel", "fsdp", processes=2)
    assert (moved / "ckpt.dcp" / ".metadata").is_file() and not (moved / "ckpt.pt").exists()
    train(moved, "--resume", "--max-iters", "6")                             # 2 -> 1
    train(moved, "--resume", "--max-iters", "9", "--parallel", "fsdp", processes=2)   # 1 -> 2
    assert len(losses(moved)) == 9
    for a, b in zip(losses(reference), losses(moved)):
        assert abs(a - b) < 1e-5
