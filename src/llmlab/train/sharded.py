"""Sharded checkpoints with torch.distributed.checkpoint (DCP): each rank writes its own shards,
and a later run reads them at any world size (DCP reshards on load).

    ckpt.dcp/            the latest checkpoint of a torchrun run
        .metadata        DCP's index: which shard of which tensor lives in which file
        __0_0.distcp ... one file per rank: model and optimizer tensors (FSDP: this rank's shards)
        trainer.pt       what is not a tensor: loop state, RNG, config, tokenizer (rank 0 writes it)

Writing is atomic per checkpoint: everything goes to ckpt.dcp.tmp/, every rank finishes (a
barrier), and rank 0 then swaps directories (ckpt.dcp -> ckpt.dcp.old, tmp -> ckpt.dcp, old
removed). A crash before the swap leaves the previous ckpt.dcp untouched; a crash inside it leaves
ckpt.dcp.old, which `sharded_dir` falls back to.

The state dicts come from torch.distributed.checkpoint.state_dict.get_state_dict, which names
every tensor by its plain module path whatever wraps the model (DDP's `module.`, FSDP2's DTensor
shards), so a 2-process FSDP checkpoint loads into a plain 1-process model and back.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_state_dict)

from llmlab.core.errors import LLMLabError

SHARDED = "ckpt.dcp"
TRAINER_FILE = "trainer.pt"


def sharded_dir(run_dir: Path) -> Path | None:
    """The run's sharded checkpoint directory, or the previous one if a swap was interrupted."""
    for name in (SHARDED, SHARDED + ".old"):
        candidate = Path(run_dir) / name
        if (candidate / ".metadata").is_file() and (candidate / TRAINER_FILE).is_file():
            return candidate
    return None


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_sharded(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                 trainer_state: dict[str, Any], is_main: bool) -> Path:
    """Every rank calls this at the same step (it is a collective)."""
    run_dir = Path(run_dir)
    tmp, final, old = run_dir / (SHARDED + ".tmp"), run_dir / SHARDED, run_dir / (SHARDED + ".old")
    if is_main and tmp.exists():
        shutil.rmtree(tmp)              # a save that crashed earlier
    _barrier()
    model_state, optim_state = get_state_dict(model, optimizer) if optimizer is not None else \
        (get_model_state_dict(model), {})
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp))
    if is_main:
        torch.save(trainer_state, tmp / TRAINER_FILE)
    _barrier()                          # every rank's shards are on disk
    if is_main:
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
        tmp.rename(final)
        if old.exists():
            shutil.rmtree(old)
    _barrier()
    return final


def load_trainer_state(directory: Path) -> dict[str, Any]:
    return torch.load(directory / TRAINER_FILE, map_location="cpu", weights_only=False)


def load_sharded(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Fill `model` (plain, DDP-wrapped or FSDP-sharded) and `optimizer` from a sharded checkpoint
    written at any world size. Without a process group DCP reads every shard in this process."""
    try:
        if optimizer is None:
            model_state = get_model_state_dict(model)
            dcp.load({"model": model_state}, checkpoint_id=str(directory))
            set_model_state_dict(model, model_state)
            return
        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.load({"model": model_state, "optim": optim_state}, checkpoint_id=str(directory))
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)
    except (RuntimeError, KeyError, ValueError) as e:
        raise LLMLabError(f"{directory}: the sharded checkpoint does not fit this model "
                          f"({' '.join(str(e).split())[:200]})") from None


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Whole tensors on the CPU, gathered from every rank's shards (a collective under FSDP): what
    best.pt and `llmlab export` want. Every rank must call it; rank 0 writes the result."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def shard_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                               plain_model: torch.nn.Module, scratch: torch.optim.Optimizer, plain_state: dict) -> None:
    """A one-process optimizer state (keyed by parameter index, whole tensors) into the optimizer of
    a sharded model: loaded into `scratch`, an optimizer built the same way on an unsharded copy
    `plain_model`, which names every entry by parameter path; then split into the shards."""
    scratch.load_state_dict(plain_state)
    _, named = get_state_dict(plain_model, scratch)
    set_state_dict(model, optimizer, model_state_dict={}, optim_state_dict=named,
                   options=StateDictOptions(full_state_dict=True, strict=False))
