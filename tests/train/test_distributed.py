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


def grad_norms(run: Path) -> list[float]:
    return [json.loads(line)["grad_norm"] for line in (run / "metrics.jsonl").read_text().splitlines()]


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
        # AdamW barely notices a gradient scaled by a constant; the norm does (the x world factor)
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * a["grad_norm"], (a, b)
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
    train(moved, *schedule, "--max-iters", "3", "--parallel", "fsdp", "--sample-tokens", "16", processes=2)
    assert (moved / "ckpt.dcp" / ".metadata").is_file() and not (moved / "ckpt.pt").exists()
    assert "=== step 3" in (moved / "samples.txt").read_text()     # sampled from the gathered weights
    sample = subprocess.run([sys.executable, "-m", "llmlab", "sample", str(moved), "--max-new-tokens", "8"],
                            capture_output=True, text=True, timeout=300)
    assert sample.returncode == 0 and sample.stdout.strip(), sample.stderr[-2000:]   # best.pt: whole tensors
    train(moved, "--resume", "--max-iters", "6")                             # 2 -> 1
    train(moved, "--resume", "--max-iters", "9", "--parallel", "fsdp", processes=2)   # 1 -> 2
    assert len(losses(moved)) == 9
    for a, b in zip(losses(reference), losses(moved)):
        assert abs(a - b) < 1e-5
    for a, b in zip(grad_norms(reference), grad_norms(moved)):
        assert abs(a - b) < 1e-4 * a


@pytest.mark.slow
def test_a_rank_that_dies_stops_the_other_with_a_message_and_the_checkpoint_survives(tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "llmlab", "train", *TINY, "--max-iters", "100000", "--ckpt-every", "5", "--out", str(out)]
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "ckpt.dcp" / "trainer.pt").is_file():
            assert time.monotonic() < deadline and launcher.poll() is None, "no checkpoint was written"
            time.sleep(0.2)
        time.sleep(1.0)
        rank1 = next(int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _is_rank(d, "1", out))
        os.kill(rank1, signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert "checkpoint" in stderr and "intact" in stderr, stderr[-2000:]
    resumed = subprocess.run([sys.executable, "-m", "llmlab", "train", "--resume", str(out), "--max-iters", "12"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def _is_rank(proc: Path, rank: str, out: Path) -> bool:
    try:
        environ = dict(item.split("=", 1) for item in (proc / "environ").read_text().split("\0") if "=" in item)
        return environ.get("RANK") == rank and str(out) in (proc / "cmdline").read_text()
    except OSError:
        return False


@pytest.mark.slow
def test_only_rank_0_logs_to_wandb_offline(tmp_path):
    pytest.importorskip("wandb")
    os.environ.setdefault("WANDB_SILENT", "true")
    env_mode = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = "offline"          # no network, no account: the run is kept on disk
    try:
        rows = train(tmp_path / "run", "--max-iters", "3", "--wandb", "true", processes=2)
    finally:
        if env_mode is None:
            del os.environ["WANDB_MODE"]
        else:
            os.environ["WANDB_MODE"] = env_mode
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))     # one run, not one per rank
    assert [r["step"] for r in rows] == [1, 2, 3]                   # metrics.jsonl: once per step


MISMATCH = """
import os, sys
from llmlab.core.errors import LLMLabError
from llmlab.train.distributed import check_same_everywhere, init_distributed, shutdown
import torch
ctx, _ = init_distributed(torch.device("cpu"))
try:
    check_same_everywhere({"config": {"lr": 0.001 if ctx.rank == 0 else 0.002}, "data": "same"}, ctx)
    print("no error")
except LLMLabError as e:
    print(e)
shutdown(ctx)
"""


def test_ranks_that_disagree_on_the_config_fail_at_start():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-c", MISMATCH], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}) for r in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for out in outputs:
        assert "ranks [1] differ from rank 0 in config" in out, outputs
