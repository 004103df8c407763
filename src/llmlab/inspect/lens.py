"""The logit lens: what would the model predict if it stopped after layer i?

The residual stream is a sum that every block adds to, and the output head reads only its end:
    logits = lm_head(final_norm(h_L))
The logit lens (nostalgebraist 2020, "interpreting GPT: the logit lens") applies that same read-out
to the stream at every depth, lm_head(final_norm(h_i)), and so shows how the prediction forms:
early layers mostly predict a copy or a frequent token, and somewhere in the middle the answer
appears and climbs to the top. It assumes every layer writes in the basis the head reads, which
holds better for late layers than early ones; the tuned lens (Belrose et al. 2023) learns a
per-layer correction instead, which this file does not do.

Layer 0 here is the embedding (the stream before any block), layer L the model's own output: the
lens at layer L is exactly the model's logits (tests/inspect/test_lens.py checks it).

    logit_lens(model, trace, tokenizer, target=None)  -> LensResult
        .top[i]          the top-k (id, prob) at the last position, per layer
        .target_rank[i]  the rank (0 = top-1) of the target token at the last position, per layer
        .next_rank[i][t] the rank of the text's own next token at position t, per layer (the heatmap)
        .top1[i][t]      the top-1 id at every position, per layer (the heatmap's cell text)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from llmlab.inspect import plots
from llmlab.inspect.trace import Trace, token_text


@dataclass
class LensResult:
    tokens: list[str]                      # the positions read (the last `positions` of the prompt)
    top: list[list[tuple[int, float]]]     # per layer: top-k (id, prob) at the last position
    target: int                            # the token tracked at the last position
    target_rank: list[int]                 # per layer
    target_prob: list[float]               # per layer
    next_rank: list[list[int]]             # (L+1, P-1): rank of the actual next token at each position read
    top1: list[list[int]]                  # (L+1, P): top-1 id at every position read
    start: int = 0                         # index in the prompt of the first position read

    def first_top1_layer(self) -> int | None:
        """The shallowest layer from which the target stays top-1 to the end (None if never)."""
        layer = None
        for i in range(len(self.target_rank) - 1, -1, -1):
            if self.target_rank[i] != 0:
                break
            layer = i
        return layer


@torch.no_grad()
def lens_logits(model: nn.Module, residual: torch.Tensor) -> torch.Tensor:
    """(T, C) residual stream -> (T, V) float32 logits through the model's own final norm and head."""
    return model.lm_head(model.final_norm(residual)).float()


@torch.no_grad()
def logit_lens(model: nn.Module, trace: Trace, tokenizer, target: int | None = None, top_k: int = 5,
               positions: int | None = 48) -> LensResult:
    """Read out every layer of `trace`; target is the token to follow at the last position (default:
    the model's own top-1 there). Only the last `positions` positions are read (None: all): the
    vocabulary projection is most of the cost, (L+1) x P x C x V multiply-adds, and a heatmap wider
    than ~50 tokens cannot be read anyway. One layer at a time, so memory holds one (P, V) block."""
    start = 0 if positions is None else max(0, len(trace.ids) - positions)
    ids = torch.tensor(trace.ids[start:], device=trace.logits.device)
    if target is None:
        target = int(trace.logits[-1].argmax())
    top, target_rank, target_prob, next_rank, top1 = [], [], [], [], []
    for h in trace.residual:
        logprobs = lens_logits(model, h[start:]).log_softmax(dim=-1)                  # (P, V)
        last = logprobs[-1]
        values, indices = last.topk(top_k)
        top.append([(int(i), float(v.exp())) for v, i in zip(values, indices)])
        target_rank.append(int((last > last[target]).sum()))
        target_prob.append(float(last[target].exp()))
        actual = logprobs[:-1].gather(1, ids[1:, None])                              # (T-1, 1)
        next_rank.append((logprobs[:-1] > actual).sum(dim=1).tolist())
        top1.append(logprobs.argmax(dim=1).tolist())
    return LensResult(tokens=[token_text(tokenizer, i) for i in trace.ids[start:]], top=top, target=target,
                      target_rank=target_rank, target_prob=target_prob, next_rank=next_rank, top1=top1,
                      start=start)


def to_json(result: LensResult, tokenizer) -> dict:
    """The issue's shape: one entry per layer for the last position, the last one the model's output."""
    last = len(result.top) - 1
    return {
        "tokens": result.tokens, "start": result.start,
        "target": {"id": result.target, "token": token_text(tokenizer, result.target),
                   "first_top1_layer": result.first_top1_layer()},
        "layers": [{"layer": i, "is_output": i == last,
                    "top": [{"id": t, "token": token_text(tokenizer, t), "prob": round(p, 6)} for t, p in top],
                    "target_rank": result.target_rank[i], "target_prob": round(result.target_prob[i], 6)}
                   for i, top in enumerate(result.top)],
    }


def format_table(result: LensResult, tokenizer, every: int = 1) -> str:
    """One line per layer: the top tokens at the last position and where the target stands."""
    target = token_text(tokenizer, result.target)
    lines = [f"{'layer':>5}  {'rank of ' + repr(target):>18}  {'p':>6}  top tokens at the last position"]
    last = len(result.top) - 1
    for i, top in enumerate(result.top):
        if i % every and i != last:
            continue
        name = "out" if i == last else ("emb" if i == 0 else str(i))
        shown = "  ".join(f"{token_text(tokenizer, t)!r} {p:.2f}" for t, p in top)
        lines.append(f"{name:>5}  {result.target_rank[i]:>18}  {result.target_prob[i]:6.3f}  {shown}")
    return "\n".join(lines)


def plot_lens(result: LensResult, tokenizer, path: str | Path, title: str = "") -> Path:
    """Layers (rows) x positions (columns): colour = log10(1 + rank of the true next token), so dark
    means the layer already predicts the text; the cell text is that layer's top-1 guess. The last
    column, which has no next token in the text, shows the target's rank instead."""
    import numpy as np

    layers, T = len(result.next_rank), len(result.tokens)
    ranks = np.zeros((layers, T))
    ranks[:, :-1] = np.asarray(result.next_rank) if T > 1 else 0
    ranks[:, -1] = result.target_rank
    text = [[token_text(tokenizer, t) for t in row] for row in result.top1]
    fig, (ax,) = plots.figure(cell=(max(6.0, 0.55 * T + 2), max(4.0, 0.22 * layers + 1.5)))
    ylabels = ["emb"] + [str(i) for i in range(1, layers - 1)] + ["out"]
    plots.heatmap(ax, np.log10(1 + ranks)[::-1], xlabels=result.tokens, ylabels=ylabels[::-1],
                  cmap="viridis_r", vmin=0, colorbar="log10(1 + rank of the next token)",
                  cell_text=text[::-1] if T <= 40 else None,
                  title=title or "logit lens: each layer's guess for the next token (top: output)")
    shown = f"positions {result.start}..{result.start + T - 1}" if result.start else "position"
    ax.set_xlabel(f"{shown} (the token read); last column: rank of the target "
                  f"{token_text(tokenizer, result.target)!r}", fontsize=8)
    ax.set_ylabel("layer (residual stream entering it)", fontsize=8)
    return plots.save(fig, path)
