"""AdamW with decay on matrices only, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def param_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool = False) -> list[dict]:
    """Weight decay pulls weights toward 0. That regularises the matrices of linear layers, but on
    norms' gains and on biases it only fights the model (they set scales and offsets), and on
    embeddings it penalises rare tokens' rows more than common ones. Only trainable parameters
    are included, so the same function serves LoRA (frozen base) and full training."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear twice
            continue
        seen.add(id(p))
        is_embedding = name.endswith("emb.weight") or "tok_emb" in name or "pos_emb" in name
        if p.dim() >= 2 and (decay_embeddings or not is_embedding):
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                   device: torch.device, decay_embeddings: bool = False) -> torch.optim.AdamW:
    # The fused kernel updates all parameters in one launch on CUDA. On CPU torch's default is the
    # per-tensor loop (foreach is its default only for CUDA tensors): ~10 small ops per parameter
    # tensor, each dispatched from Python. foreach=True issues each op once for the whole list
    # (the same update); on nanoGPT's CPU configuration, 0 to +10% per step on a loaded 2-core
    # machine (benchmarks/train_step.py, docs/01-gpt-from-scratch.md "Where the time goes").
    fused = device.type == "cuda"
    return torch.optim.AdamW(param_groups(model, weight_decay, decay_embeddings), lr=lr, betas=betas,
                             fused=fused, foreach=not fused)


def lr_at(progress: float, step: int, lr: float, min_lr: float, warmup_iters: int) -> float:
    """Linear warmup for `warmup_iters` steps, then cosine from lr down to min_lr as progress -> 1.

    `progress` is the fraction of the run done (by steps, or by wall time for --max-time runs).
    Warmup keeps Adam's first updates small while its second-moment estimates are still noisy.
    """
    if step < warmup_iters:
        return lr * (step + 1) / warmup_iters
    progress = min(max(progress, 0.0), 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
