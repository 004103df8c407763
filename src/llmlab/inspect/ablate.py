"""Knock out attention heads and see how the next-token distribution moves.

An ablation is the simplest causal test of a story read off a picture: if head 12.3 "moves the
country's name to the last position", removing it should hurt the capital's probability, and
removing an unrelated head should not. A head is removed before the output projection mixes the
heads (trace.ablated_heads): zero ablation sets its output to zero; mean ablation replaces it with
its mean over the prompt's positions, which keeps the head's constant part and removes only what
depends on the input (Wang et al. 2022, "Interpretability in the wild"). Redundant heads can make an
ablation look harmless (another head does the same job), so a small effect is weak evidence.

    ablation_effect(model, ids, heads)    top tokens before/after, KL(before || after), the change in
                                          the probability of the unablated top token
    scan_heads(model, ids)                every head ablated alone, ranked by the KL it causes
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from llmlab.inspect import plots
from llmlab.inspect.trace import ablated_heads, token_text


@torch.no_grad()
def next_token_logprobs(model: nn.Module, ids: list[int]) -> torch.Tensor:
    """(V,) float32 log-probabilities of the token after `ids`."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        logits = model(torch.tensor([ids], device=device), last_only=True)["logits"][0, -1]
    finally:
        model.train(was_training)
    return logits.float().log_softmax(-1)


def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> float:
    """KL(p || q) in nats between two log-probability vectors."""
    return float((p_log.exp() * (p_log - q_log)).sum())


def ablation_effect(model: nn.Module, tokenizer, ids: list[int], heads: dict[int, list[int]],
                    mode: str = "zero", top_k: int = 5) -> dict:
    before = next_token_logprobs(model, ids)
    with ablated_heads(model, heads, mode):
        after = next_token_logprobs(model, ids)
    top_before = int(before.argmax())

    def top(logprobs: torch.Tensor) -> list[dict]:
        values, indices = logprobs.topk(top_k)
        return [{"id": int(i), "token": token_text(tokenizer, i), "prob": round(float(v.exp()), 6),
                 "prob_before": round(float(before[i].exp()), 6), "prob_after": round(float(after[i].exp()), 6)}
                for v, i in zip(values, indices)]

    return {"heads": [f"{layer}.{h}" for layer, hs in sorted(heads.items()) for h in hs], "mode": mode,
            "kl_nats": round(kl(before, after), 6),
            "top_token": {"id": top_before, "token": token_text(tokenizer, top_before),
                          "prob_before": round(float(before[top_before].exp()), 6),
                          "prob_after": round(float(after[top_before].exp()), 6),
                          "rank_after": int((after > after[top_before]).sum())},
            "top_before": top(before), "top_after": top(after)}


def scan_heads(model: nn.Module, ids: list[int], mode: str = "zero", progress=None) -> torch.Tensor:
    """(L, H) KL(before || after) of ablating each head alone: L * H forward passes of the prompt."""
    L, H = len(model.blocks), model.config.n_head
    before = next_token_logprobs(model, ids)
    scores = torch.zeros(L, H)
    for layer in range(L):
        for h in range(H):
            with ablated_heads(model, {layer: [h]}, mode):
                scores[layer, h] = kl(before, next_token_logprobs(model, ids))
        if progress:
            progress(layer + 1, L)
    return scores


def plot_effect(effect: dict, path: str | Path) -> Path:
    """Bars: the probability of the top tokens before and after the ablation."""
    import numpy as np

    tokens = {t["id"]: t for t in effect["top_before"] + effect["top_after"]}
    rows = sorted(tokens.values(), key=lambda t: -max(t["prob_before"], t["prob_after"]))[:10]
    fig, (ax,) = plots.figure(cell=(7.0, 3.6))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [t["prob_before"] for t in rows], 0.4, label="before")
    ax.bar(x + 0.2, [t["prob_after"] for t in rows], 0.4, label=f"{effect['mode']}-ablated {', '.join(effect['heads'])}")
    ax.set_xticks(x)
    ax.set_xticklabels([plots.axis_label(t["token"]) for t in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("next-token probability")
    ax.set_title(f"KL(before || after) = {effect['kl_nats']:.4f} nats", fontsize=9)
    ax.legend(fontsize=8)
    return plots.save(fig, path)


def plot_scan(scores: torch.Tensor, path: str | Path) -> Path:
    """Every head's ablation KL, layers down, heads across."""
    L, H = scores.shape
    fig, (ax,) = plots.figure(cell=(max(4.0, 0.45 * H + 2), max(4.0, 0.2 * L + 1.5)))
    plots.heatmap(ax, scores.numpy(), xlabels=[str(h) for h in range(H)], ylabels=[str(layer) for layer in range(L)],
                  vmin=0, colorbar="KL(before || after), nats", title="next-token change when one head is ablated")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    return plots.save(fig, path)
