"""How big the numbers inside a model get: residual-stream norms, MLP activations, outlier dimensions.

    activation_stats(model, ids)      one forward pass -> a JSON-able dict (below)
    plot_activations(stats, out_dir)  three PNGs:

    activations-residual-norms.png   log10 of the residual stream's L2 norm, layers (rows) x positions
        (columns, labelled with the tokens). Row 0 is the embedding, row L leaves the last block. In a
        pre-norm Transformer each block *adds* to the stream, so norms usually grow with depth. A
        column far brighter than the rest, most often the first position, is an attention sink:
        many heads park their attention on the first token (Xiao et al. 2023, arXiv:2309.17453), and
        its residual carries "massive activations", a few entries orders of magnitude larger than
        everything else (Sun et al. 2024, arXiv:2402.17762). `massive_activations` lists the largest
        entries with their layer, position, token and dimension.
    activations-mlp-hist.png         per layer, a histogram of the MLP's hidden activation (the input
        of mlp.w_down; log count). GELU/SiLU pile values just below and at zero; a long right tail
        (high kurtosis) means a few neurons fire far harder than the rest.
    activations-outliers.png         for each outlier dimension, the largest |x| it reaches at each
        layer's linear inputs, against the threshold. A dimension that is large in every layer, at
        most positions, is a systematic outlier feature, not noise.

Outlier features (Dettmers et al. 2022, LLM.int8(), arXiv:2208.07339, sec. 4): a hidden dimension
whose magnitude is >= 6 in the inputs of the linear layers (here attn.wq and mlp.w_up, which read
the normed stream) in at least 25% of the layers and at least 6% of the sequence positions. They
matter for quantization: int8 with one scale per tensor (or per row of X) sets the scale from the
largest |x|, so a dimension at 60 when the rest sit near 1 leaves the ordinary values only a few of
the 255 levels, and rounding wipes them out. LLM.int8() therefore multiplies the few outlier
columns in float16 and the rest in int8; weight-only schemes (llmlab.quant) sidestep the problem by
keeping activations in float.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from llmlab.core.errors import LLMLabError
from llmlab.inspect import plots
from llmlab.inspect.trace import recording_inputs, token_text, trace

NEAR_ZERO = 0.01          # |x| < NEAR_ZERO * max|x| of the layer counts as "near zero"
LAYERS_FRAC, POSITIONS_FRAC = 0.25, 0.06     # Dettmers et al. 2022's criteria
N_MASSIVE = 10            # how many of the largest residual entries to list

OUTLIER_DEFINITION = (
    "Dettmers et al. 2022 (LLM.int8(), arXiv:2208.07339, sec. 4): a hidden dimension whose |x| >= threshold "
    "in the inputs of the linear layers that read the normed residual stream (attn.wq, mlp.w_up), "
    f"in at least {LAYERS_FRAC:.0%} of the layers (a layer counts when either input reaches it at some position) "
    f"and at least {POSITIONS_FRAC:.0%} of the positions (a position counts when any layer's input reaches it "
    "there). Per-tensor int8 takes its scale from such a dimension and rounds the ordinary ones away.")
MASSIVE_DEFINITION = (
    "the largest |x| entries of the residual stream (Sun et al. 2024, arXiv:2402.17762); layer 0 is the "
    "embedding, layer i the output of block i-1 (as in residual_norm); `massive` marks "
    "their criterion: |x| > 100 and at least 1000 times the layer's median |x|. They usually sit at the "
    "first position, the attention sink (Xiao et al. 2023, arXiv:2309.17453).")


def _moments(x: torch.Tensor, bins: int) -> dict:
    """Summary of one layer's MLP hidden activation, flattened. kurtosis is the excess kurtosis
    E[(x-mean)^4] / var^2 - 3 (0 for a Gaussian; large when a few values dominate)."""
    x = x.double().flatten().cpu()
    mean = x.mean()
    centred = x - mean
    var = centred.pow(2).mean()
    kurtosis = float(centred.pow(4).mean() / var.pow(2) - 3.0) if var > 0 else 0.0
    peak = x.abs().max()
    counts, edges = torch.histogram(x, bins=bins)
    return {"mean": float(mean), "std": float(var.sqrt()), "min": float(x.min()), "max": float(x.max()),
            "kurtosis": kurtosis, "frac_near_zero": float((x.abs() < NEAR_ZERO * peak).double().mean()),
            "hist": {"edges": edges.tolist(), "counts": [int(c) for c in counts.tolist()]}}


def _outliers(inputs: list[list[torch.Tensor]], threshold: float) -> dict:
    """inputs[layer] = the (T, C) inputs of that layer's linear layers."""
    n_layer = len(inputs)
    # (L, T, C): per layer, the largest |x| over that layer's recorded inputs.
    peak = torch.stack([torch.stack([x.abs() for x in layer]).amax(0) for layer in inputs])
    hit = peak >= threshold
    layers_frac = hit.any(1).double().mean(0)            # (C,) fraction of layers
    positions_frac = hit.any(0).double().mean(0)         # (C,) fraction of positions
    found = ((layers_frac >= LAYERS_FRAC) & (positions_frac >= POSITIONS_FRAC)).nonzero().flatten()
    by_layer = peak.amax(1)                              # (L, C): max |x| over positions
    dims = [{"dim": int(d), "layers_frac": float(layers_frac[d]), "positions_frac": float(positions_frac[d]),
             "max_abs": float(by_layer[:, d].max()), "max_abs_by_layer": by_layer[:, d].tolist()}
            for d in found]
    dims.sort(key=lambda d: -d["max_abs"])
    return {"threshold": threshold, "n_layers": n_layer, "dims": dims,
            "median_dim_max_abs_by_layer": by_layer.median(1).values.tolist(),
            "definition": OUTLIER_DEFINITION}


def _massive(residual: list[torch.Tensor], tokens: list[str]) -> list[dict]:
    stream = torch.stack(residual)                       # (L+1, T, C)
    L1, T, C = stream.shape
    medians = stream.abs().flatten(1).median(1).values   # (L+1,)
    values, flat = stream.abs().flatten().topk(min(N_MASSIVE, stream.numel()))
    out = []
    for value, index in zip(values.tolist(), flat.tolist()):
        layer, rest = divmod(index, T * C)
        position, dim = divmod(rest, C)
        ratio = value / float(medians[layer]) if medians[layer] > 0 else float("inf")
        out.append({"layer": layer, "position": position, "token": tokens[position], "dim": dim,
                    "value": float(stream[layer, position, dim]), "ratio_to_median": ratio,
                    "massive": value > 100 and ratio >= 1000})
    return out


@torch.no_grad()
def activation_stats(model: nn.Module, ids: list[int], threshold: float = 6.0, bins: int = 60,
                     tokenizer=None) -> dict:
    """Residual norms, MLP histograms, outlier dimensions and the largest residual entries of one
    forward pass over `ids`. With a tokenizer the positions are labelled by their tokens, else by id."""
    if not threshold > 0:
        raise LLMLabError(f"--threshold {threshold}: give a positive magnitude (Dettmers et al. use 6)")
    if bins < 1:
        raise LLMLabError(f"--bins {bins}: give at least 1 histogram bin")
    n_layer = len(model.blocks)
    names = [f"blocks.{i}.{part}" for i in range(n_layer) for part in ("attn.wq", "mlp.w_up")]
    with recording_inputs(model, names) as seen:
        tr = trace(model, ids, mlp=True)
    tokens = [token_text(tokenizer, i) for i in ids] if tokenizer is not None else [str(i) for i in ids]
    norms = [torch.linalg.vector_norm(h, dim=-1) for h in tr.residual]       # L+1 of (T,)
    mlp = [{"layer": i, **_moments(tr.mlp_hidden[i], bins)} for i in range(n_layer)]
    inputs = [[seen[f"blocks.{i}.{part}"][0].float() for part in ("attn.wq", "mlp.w_up")] for i in range(n_layer)]
    # The first position's norm against the median of the others', averaged over the blocks' outputs:
    # far above 1 is the attention-sink signature.
    sink = None
    if len(ids) > 1:
        sink = float(torch.stack([n[0] / n[1:].median() for n in norms[1:]]).mean())
    return {"ids": list(ids), "tokens": tokens, "n_layer": n_layer,
            "residual_norm": [n.tolist() for n in norms],
            "residual_norm_by_layer": [float(n.mean()) for n in norms],
            "first_position_norm_ratio": sink,
            "mlp": mlp, "near_zero_definition": f"|x| < {NEAR_ZERO} * max|x| of the layer's MLP hidden activation",
            "kurtosis_definition": "excess kurtosis E[(x-mean)^4] / var^2 - 3 (0 for a Gaussian)",
            "outliers": _outliers(inputs, threshold),
            "massive_activations": _massive(tr.residual, tokens),
            "massive_definition": MASSIVE_DEFINITION}


def plot_activations(stats: dict, out_dir: str | Path) -> list[Path]:
    """Write the three PNGs described in the module docstring into out_dir; return their paths."""
    import numpy as np

    out_dir = Path(out_dir)
    tokens, n_layer = stats["tokens"], stats["n_layer"]
    paths = []

    norms = np.log10(np.maximum(np.asarray(stats["residual_norm"], dtype=float), 1e-12))
    fig, (ax,) = plots.figure(1, 1, cell=(max(5.0, 0.22 * len(tokens) + 2.5), max(3.0, 0.25 * (n_layer + 1) + 1.5)))
    plots.heatmap(ax, norms, xlabels=tokens, ylabels=["emb"] + [f"blk{i}" for i in range(n_layer)],
                  title="residual stream norm per layer and position", colorbar="log10 ||x||")
    ax.set_xlabel("position (token)")
    ax.set_ylabel("embedding, then the output of block i")
    paths.append(plots.save(fig, out_dir / "activations-residual-norms.png"))

    cols = min(4, n_layer)
    rows = -(-n_layer // cols)
    fig, axes = plots.figure(rows, cols, cell=(3.0, 2.2))
    for ax, layer in zip(axes, stats["mlp"]):
        counts = np.asarray(layer["hist"]["counts"], dtype=float)
        ax.stairs(np.where(counts > 0, counts, np.nan), layer["hist"]["edges"], fill=True, alpha=0.7)
        ax.set_yscale("log")
        ax.set_title(f"layer {layer['layer']}  kurtosis {layer['kurtosis']:.1f}", fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes[n_layer:]:
        ax.axis("off")
    fig.suptitle("MLP hidden activation (input of w_down), log count", fontsize=9)
    paths.append(plots.save(fig, out_dir / "activations-mlp-hist.png"))

    outliers = stats["outliers"]
    fig, (ax,) = plots.figure(1, 1, cell=(6.0, 3.8))
    layers = range(n_layer)
    ax.plot(layers, outliers["median_dim_max_abs_by_layer"], color="grey", lw=1.5, label="median dim")
    for dim in outliers["dims"][:12]:
        ax.plot(layers, dim["max_abs_by_layer"], marker=".", lw=1, label=f"dim {dim['dim']}")
    ax.axhline(outliers["threshold"], color="red", ls="--", lw=1, label=f"threshold {outliers['threshold']:g}")
    if not outliers["dims"]:
        ax.text(0.5, 0.5, "no outlier dimensions at this threshold", transform=ax.transAxes, ha="center")
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("max |x| at attn.wq / mlp.w_up input")
    ax.set_title(f"outlier feature dimensions ({len(outliers['dims'])} found; Dettmers et al. 2022)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    paths.append(plots.save(fig, out_dir / "activations-outliers.png"))
    return paths
