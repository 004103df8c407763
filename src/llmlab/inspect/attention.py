"""Attention maps: for each query position, how much of each earlier token each head reads.

Row t of head h in layer l is softmax(q_t K^T / sqrt(D)) over the positions 0..t, so every row sums
to one and everything above the diagonal is zero (a causal model cannot look ahead). Patterns
worth knowing by sight (Clark et al. 2019 read BERT's the same way; Elhage et al. 2021 for GPTs):
    a bright first column      an "attention sink": heads park probability on the first token when
                               there is nothing useful to read (Xiao et al. 2023, arXiv:2309.17453)
    a bright sub-diagonal      a previous-token head (t reads t-1)
    a diagonal offset by a     an induction head on repeated text: it reads the token after the
    repeated span's length     previous occurrence of the current one (Olsson et al. 2022)
    a plain diagonal           a head reading the current token itself

Only the layers asked for go through the explicit attention path that materialises the weights
(H x T x T floats per layer), so long prompts stay within memory.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from llmlab.inspect import plots
from llmlab.inspect.trace import Trace


def head_summary(weights: torch.Tensor) -> list[dict]:
    """Per head of one layer's (H, T, T) weights: mean entropy of a row (bits), the mass on the
    first token, on the previous token and on the token itself, averaged over query positions 1..T-1
    (position 0 can only read itself)."""
    H, T, _ = weights.shape
    rows = weights[:, 1:] if T > 1 else weights                                        # (H, T', T)
    entropy = -(rows.clamp_min(1e-12).log2() * rows).sum(-1).mean(-1)                  # (H,)
    first = rows[..., 0].mean(-1)
    if T > 1:
        t = torch.arange(1, T)
        previous = weights[:, t, t - 1].mean(-1)
        itself = weights[:, t, t].mean(-1)
    else:
        previous = itself = torch.zeros(H)
    return [{"head": h, "entropy_bits": round(float(entropy[h]), 4), "first_token": round(float(first[h]), 4),
             "previous_token": round(float(previous[h]), 4), "self": round(float(itself[h]), 4)}
            for h in range(H)]


def to_json(trace: Trace, tokens: list[str]) -> dict:
    """Per chosen layer: each head's summary and its weights for the last query position."""
    return {"tokens": tokens,
            "layers": [{"layer": layer,
                        "heads": [dict(summary, last_query=[round(float(w), 5) for w in weights[h, -1]])
                                  for h, summary in enumerate(head_summary(weights))]}
                       for layer, weights in sorted(trace.attentions.items())]}


def plot_layer(weights: torch.Tensor, tokens: list[str], layer: int, path: str | Path,
               heads: list[int] | None = None) -> Path:
    """A grid of heatmaps, one per head: query position down, key position across. Colour is the
    square root of the weight, so the small weights that most heads spread around still show."""
    heads = list(range(weights.size(0))) if heads is None else heads
    cols = min(len(heads), 4 if len(heads) % 3 else 3)
    rows = math.ceil(len(heads) / cols)
    T = weights.size(-1)
    labelled = T <= 32
    side = 3.2 if not labelled else max(3.2, 0.14 * T + 1.4)
    fig, axes = plots.figure(rows, cols, cell=(side, side))
    for ax, h in zip(axes, heads):
        plots.heatmap(ax, weights[h].sqrt().cpu().numpy(), xlabels=tokens if labelled else None,
                      ylabels=tokens if labelled else None, cmap="magma", vmin=0, vmax=1, title=f"head {layer}.{h}")
    for ax in axes[len(heads):]:
        ax.axis("off")
    fig.suptitle(f"layer {layer} attention (colour: sqrt of weight; rows are queries, columns keys)", fontsize=10)
    return plots.save(fig, path)


def plot_attention(trace: Trace, tokens: list[str], out_dir: str | Path) -> list[Path]:
    """One PNG per chosen layer: attention-layer{l}.png."""
    return [plot_layer(weights, tokens, layer, Path(out_dir) / f"attention-layer{layer}.png")
            for layer, weights in sorted(trace.attentions.items())]
