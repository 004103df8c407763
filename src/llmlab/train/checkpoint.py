"""Checkpoints: everything needed to continue a run exactly, written atomically.

`ckpt.pt` holds the model and optimizer state, the step, the elapsed time, every RNG state (torch
CPU/CUDA, the batch generator), the best val loss and the resolved config. It is written to a
temporary file and renamed over the old one, so a crash mid-write leaves the previous checkpoint
intact. It loads onto the CPU first (so resuming never needs twice the GPU memory).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_save

CHECKPOINT = "ckpt.pt"
BEST = "best.pt"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    atomic_save(path, lambda f: torch.save({"format_version": FORMAT_VERSION, **state}, f))


def checkpoint_path(run_or_file: str | Path, name: str = CHECKPOINT) -> Path:
    path = Path(run_or_file)
    return path / name if path.is_dir() else path


def load_checkpoint(run_or_file: str | Path, name: str = CHECKPOINT) -> dict[str, Any]:
    """Load `<run>/ckpt.pt` (or a checkpoint file) onto the CPU, with errors a person can act on."""
    path = checkpoint_path(run_or_file, name)
    if not path.is_file():
        if Path(run_or_file).is_dir():
            raise LLMLabError(f"{path} does not exist: {run_or_file} holds no checkpoint yet "
                              "(a run writes one every --ckpt-every steps, at the end and on Ctrl-C)")
        raise LLMLabError(f"{path} does not exist: pass a run directory or a checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError) as e:
        raise LLMLabError(f"{path} is not a readable checkpoint ({type(e).__name__}: {str(e)[:200]}); "
                          "it may be truncated or from another program") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        version = state.get("format_version") if isinstance(state, dict) else None
        raise LLMLabError(f"{path} has checkpoint format {version!r}, this llmlab reads {FORMAT_VERSION}")
    return state


def capture_rng(generator: torch.Generator) -> dict[str, torch.Tensor]:
    rng = {"torch": torch.get_rng_state(), "batches": generator.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["batches"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
