"""Training diagnostics: per-group gradient norms, update-to-weight ratios, loss spikes.

Grouped by what the parameters do (embeddings, attention, MLP, norms, head), these are the first
things to look at when a run misbehaves: a group whose gradient norm explodes, or whose
update/weight ratio sits far from ~1e-3 per step (a rule of thumb from Karpathy's "makemore"
lectures), points at the layer and the learning rate to fix.
"""

from __future__ import annotations

import math
from collections import deque

import torch
import torch.nn as nn


def group_of(name: str) -> str:
    if "emb" in name:
        return "embed"
    if "norm" in name:
        return "norm"
    if ".attn." in name:
        return "attn"
    if ".mlp." in name:
        return "mlp"
    if "lm_head" in name:
        return "head"
    return "other"


def snapshot_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def grad_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of the gradient of each parameter group (call after backward, before step)."""
    sq: dict[str, float] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            g = group_of(name)
            sq[g] = sq.get(g, 0.0) + float(p.grad.detach().float().pow(2).sum())
    return {f"grad_norm/{g}": math.sqrt(v) for g, v in sq.items()}


def update_ratios(model: nn.Module, before: dict[str, torch.Tensor]) -> dict[str, float]:
    """||w_after - w_before|| / ||w_before|| per group: how much one step changed the weights."""
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    for name, p in model.named_parameters():
        if name in before:
            g = group_of(name)
            num[g] = num.get(g, 0.0) + float((p.detach() - before[name]).float().pow(2).sum())
            den[g] = den.get(g, 0.0) + float(before[name].float().pow(2).sum())
    return {f"update_ratio/{g}": math.sqrt(num[g]) / max(math.sqrt(den[g]), 1e-12) for g in num}


class SpikeDetector:
    """Flags a step whose loss exceeds the mean of the last `window` steps by `factor` std devs."""

    def __init__(self, factor: float = 3.0, window: int = 50):
        self.factor, self.recent = factor, deque(maxlen=window)

    def __call__(self, loss: float) -> bool:
        spike = False
        if len(self.recent) >= 10:
            mean = sum(self.recent) / len(self.recent)
            std = math.sqrt(sum((x - mean) ** 2 for x in self.recent) / len(self.recent))
            spike = loss > mean + self.factor * max(std, 1e-3)
        self.recent.append(loss)
        return spike
