"""Data-parallel training on PyTorch's own engine: one process per device, launched by torchrun.

    torchrun --nproc_per_node 2 -m llmlab train --preset shakespeare-char --out runs/ddp

torchrun starts N copies of the same program and tells each who it is through the environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). `init_distributed` turns that into a
`DistContext` and joins the process group: gloo on CPU, NCCL on CUDA, one device per process.
Without WORLD_SIZE (a plain `llmlab train`) it returns a one-process context and nothing changes.

What each rank does, and why the result does not depend on the world size:
    - every rank draws the *same* global batch from the same seeded generator and keeps its slice
      of the rows (`rank_rows`): 1 process and N processes see the same windows at every step;
    - the loss is summed over a rank's target tokens and divided by the *global* target count, and
      DDP / FSDP average gradients over ranks, so each rank scales its loss by the world size: the
      averaged gradient is then exactly the one-process gradient of the global batch;
    - gradient accumulation skips the all-reduce on every micro-step but the last (`no_sync`):
      gradients add up locally and cross the network once per optimizer step.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from llmlab.core.errors import LLMLabError

PARALLEL = ("auto", "none", "ddp", "fsdp")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, logs metrics and writes the files every rank would write alike."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device, timeout_s: float = 300.0) -> tuple[DistContext, torch.device]:
    """(context, this rank's device) from torchrun's environment; a one-process context without it.
    The timeout bounds how long a collective waits for a rank that died (then every rank fails
    with a message instead of hanging)."""
    if not launched_by_torchrun():
        return DistContext(), device
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise LLMLabError(f"rank {rank} wants cuda:{local}, but this node has {torch.cuda.device_count()} "
                              "GPU(s): use --nproc_per_node at most the GPU count")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), device_id=device
                                if device.type == "cuda" else None)
    return DistContext(rank, world, local, backend), device


def choose_parallel(requested: str, ctx: DistContext) -> str:
    """--parallel auto is DDP under torchrun. Alone, every mode is the plain model: a run started
    with --parallel fsdp on N processes continues on one (`llmlab train --resume`) unsharded."""
    if requested not in PARALLEL:
        raise LLMLabError(f"--parallel {requested!r}: use one of {', '.join(PARALLEL)}")
    if not ctx.enabled:
        return "none"
    return "ddp" if requested == "auto" else requested


def wrap_model(model: nn.Module, parallel: str, ctx: DistContext, device: torch.device,
               amp_dtype: torch.dtype | None) -> nn.Module:
    """The module the loop calls forward/backward on. DDP wraps and keeps `model` intact (its
    parameters are shared); FSDP2 shards `model` itself in place, block by block (Zhao et al. 2023),
    so it must run before the optimizer is built."""
    if parallel == "none":
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # bf16 compute with float32 gradient reduction on CUDA: the policy replaces autocast for the
    # sharded parameters (gathered in bf16, so the all-gather moves half the bytes).
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if device.type == "cuda" and amp_dtype == torch.bfloat16 else MixedPrecisionPolicy()
    for block in model.blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def rank_rows(batch: dict[str, torch.Tensor], ctx: DistContext) -> dict[str, torch.Tensor]:
    """This rank's rows of a global micro-batch: rows rank, rank + N, rank + 2N, ..."""
    if not ctx.enabled:
        return batch
    rows = next(iter(batch.values())).size(0)
    if rows % ctx.world_size:
        raise LLMLabError(f"--batch-size {rows} does not split over {ctx.world_size} processes: use a multiple "
                          f"of {ctx.world_size} (the batch size is the global batch, shared by all ranks)")
    return {k: v[ctx.rank::ctx.world_size] for k, v in batch.items()}


@contextmanager
def gradient_sync(module: nn.Module, parallel: str, sync: bool) -> Iterator[None]:
    """While inside, backward reduces gradients across ranks only if `sync`: DDP's no_sync() and
    FSDP2's set_requires_gradient_sync(False) keep them local for all but the last micro-step."""
    if sync or parallel == "none":
        yield
        return
    if parallel == "ddp":
        with module.no_sync():
            yield
        return
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def all_sum(values: list[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Element-wise sum over ranks (one small all-reduce); the values themselves without torchrun."""
    if not ctx.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def check_same_everywhere(fingerprint: dict, ctx: DistContext) -> None:
    """Fail at start, on every rank, when ranks disagree on what they train (config, data): a
    mismatch would otherwise train silently on a mix."""
    if not ctx.enabled:
        return
    seen: list = [None] * ctx.world_size
    dist.all_gather_object(seen, fingerprint)
    differ = [r for r, f in enumerate(seen) if f != seen[0]]
    if differ:
        keys = sorted(k for k in fingerprint if any(f.get(k) != seen[0].get(k) for f in seen))
        raise LLMLabError(f"ranks {differ} differ from rank 0 in {', '.join(keys)}: every process must see the "
                          "same config and data (same files, same flags)")


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
