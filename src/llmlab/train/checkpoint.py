"""Training checkpoints: the generic file handling lives in `llmlab.model.checkpoint`; here, the
RNG states that make a resumed run continue exactly (torch CPU/CUDA and the batch generator)."""

from __future__ import annotations

from typing import Any

import torch

from llmlab.model.checkpoint import BEST, CHECKPOINT, load_checkpoint, save_checkpoint

__all__ = ["BEST", "CHECKPOINT", "load_checkpoint", "save_checkpoint", "capture_rng", "restore_rng"]


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
