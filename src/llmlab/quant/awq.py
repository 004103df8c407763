"""AWQ: activation-aware weight quantization (Lin et al. 2023, arXiv:2306.00978).

Not all weights matter equally: the weights that multiply input channels with large activations
carry most of a layer's output, and rounding them costs most. AWQ protects them without mixed
precision. Scaling input channel c of a linear layer by s_c and its input by 1 / s_c leaves the
float layer unchanged,

    y = (x / s) (W * s)^T = x W^T

but rounds W * s instead: a column made s_c times larger keeps the same absolute rounding error
(its group's step barely changes when few columns grow), so relative to its contribution the error
shrinks by s_c (paper §3.2). The 1 / s goes into whatever produced x, so inference runs no extra op:
the RMSNorm / LayerNorm weight before q/k/v and before gate/up, the rows of w_up before w_down
(SwiGLU: h = silu(gate) * up is linear in up), the rows of wv before wo (attention's output is a
weighted sum of values; only when every query head has its own value head: with GQA (n_kv_head <
n_head) one value channel feeds several wo inputs, so AutoAWQ and we leave wo unscaled).

The scales are s = mean|x|^alpha (per input channel, normalised to a geometric mean of 1), with
alpha from a grid in [0, 1) (alpha = 0 is plain RTN) chosen to minimise the output error of the
group of linears that share the input, after int4 RTN of W * s. That error is a quadratic form in
the weights,

    ||x W^T - x W'^T||^2 summed over tokens = tr(D G D^T),  D = W - W',  G = X^T X,

so we accumulate G over every calibration token in one pass and evaluate each alpha in O(out in^2),
without running the layers again. (AutoAWQ instead re-runs the enclosing module, e.g. all of
attention, on its samples for every alpha; measuring the linear outputs themselves is what makes
AWQ practical on a CPU.) Then, per layer, the clipping search (paper §3.3, AutoAWQ's auto_clip):
shrinking a group's range [min, max] by a ratio trades clipping its extreme weights for a finer
grid for the rest; for each (row, group) keep the ratio (1.0 down to 0.55) with the least output
error on that group's inputs (the group's diagonal block of G). q and k are not clipped, as in
AutoAWQ: what matters for them is the attention scores q.k, not their own outputs.

Across the model, each block's statistics come from the float model's activations (as in llm-awq
and AutoAWQ; GPTQ instead feeds block i + 1 from the quantized block i). The block's float output
is the next block's input, so each block costs a single pass over the calibration tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from llmlab.model.surgery import replace_linears
from llmlab.quant.calibration import (InputStats, Progress, block_inputs, block_linears, run_block,
                                      target_linears)
from llmlab.quant.gptq import output_error, rtn_dequantized
from llmlab.quant.int4 import Int4Linear, group_params, quantize_to_grid

CLIP_RATIOS = tuple(1 - i / 20 for i in range(10))   # 1.0, 0.95, ..., 0.55 (AutoAWQ: max_shrink 0.5, 20 steps)
NO_CLIP = ("attn.wq", "attn.wk")

# ----------------------------------------------------------------------------- where scales fold


@dataclass
class ScaleGroup:
    """Linear layers of one block that share an input, and the op that produces it."""

    name: str             # attn_in, attn_out, mlp_in, mlp_hidden
    prev: str             # module (within the block) whose output is the input: a norm or a linear
    linears: list[str]    # the layers reading it, names within the block


def scale_groups(block: nn.Module, config) -> list[ScaleGroup]:
    """The places in a block where input scales can be folded into the previous op."""
    groups = [ScaleGroup("attn_in", "attn_norm", ["attn.wq", "attn.wk", "attn.wv"])]
    if config.n_kv_head == config.n_head:
        groups.append(ScaleGroup("attn_out", "attn.wv", ["attn.wo"]))
    if block.mlp.swiglu:
        groups.append(ScaleGroup("mlp_in", "mlp_norm", ["mlp.w_gate", "mlp.w_up"]))
        groups.append(ScaleGroup("mlp_hidden", "mlp.w_up", ["mlp.w_down"]))
    else:   # GELU between w_up and w_down: nothing to fold a scale into without an extra op
        groups.append(ScaleGroup("mlp_in", "mlp_norm", ["mlp.w_up"]))
    return groups


def can_fold(block: nn.Module, group: ScaleGroup) -> bool:
    """Every reader is a float nn.Linear and the producer has a weight to divide."""
    prev = block.get_submodule(group.prev)
    readers = [block.get_submodule(name) for name in group.linears]
    return all(isinstance(m, nn.Linear) for m in readers) and getattr(prev, "weight", None) is not None \
        and (isinstance(prev, nn.Linear) or prev.weight.dim() == 1)


@torch.no_grad()
def fold_scales(block: nn.Module, group: ScaleGroup, s: Tensor) -> None:
    """Divide the group's input by s (in the producing norm's weight and bias, or the producing
    linear's output rows) and multiply the readers' input columns by s: the float block computes
    the same function."""
    prev = block.get_submodule(group.prev)
    s = s.to(prev.weight.device)
    if isinstance(prev, nn.Linear):
        prev.weight.div_(s[:, None].to(prev.weight.dtype))
    else:
        prev.weight.div_(s.to(prev.weight.dtype))
    if getattr(prev, "bias", None) is not None:
        prev.bias.div_(s.to(prev.bias.dtype))
    for name in group.linears:
        linear = block.get_submodule(name)
        linear.weight.mul_(s.to(linear.weight.dtype))


# ----------------------------------------------------------------------------- searches


def search_scales(weight: Tensor, x_mean: Tensor, G: Tensor, group_size: int, grid: int = 20
                  ) -> tuple[Tensor, float, float, float]:
    """Best s = mean|x|^alpha for (rows, in) weights (a group's readers stacked) over alpha = k / grid.
    Returns (s, alpha, error, RTN's error), errors as tr(D G D^T)."""
    weight = weight.float()
    best = (torch.ones_like(x_mean), 0.0, float("inf"))
    rtn = float("nan")
    for k in range(grid):
        alpha = k / grid
        s = x_mean.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()      # geometric mean 1: keeps W * s in a sane float range
        diff = weight - rtn_dequantized(weight * s, group_size) / s
        err = float(((diff @ G) * diff).sum())
        if k == 0:
            rtn = err
        if err < best[2]:
            best = (s, alpha, err)
    return best[0], best[1], best[2], rtn


def _rtn_groups(groups: Tensor) -> Tensor:
    scale, low = group_params(groups)
    return quantize_to_grid(groups, scale[..., None], low[..., None]) * scale[..., None] + low[..., None]


def clip_weight(weight: Tensor, G: Tensor, group_size: int, ratios=CLIP_RATIOS) -> tuple[Tensor, float]:
    """(out, in) weight with each (row, group) range shrunk by the ratio of least output error on the
    group's own inputs, and the mean ratio chosen."""
    out, inp = weight.shape
    n_groups = inp // group_size
    w = weight.float().view(out, n_groups, group_size)
    # The group's diagonal block of G: (n_groups, group_size, group_size).
    G_blocks = G.view(n_groups, group_size, n_groups, group_size).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    low, high = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    best_err = torch.full((out, n_groups), float("inf"), device=w.device)
    best_ratio = torch.ones(out, n_groups, device=w.device)
    for r in ratios:
        diff = w - _rtn_groups(torch.clamp(w, low * r, high * r))
        err = (torch.einsum("ogi,gij->ogj", diff, G_blocks) * diff).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, r), best_ratio)
    ratio = best_ratio[..., None]
    return torch.clamp(w, low * ratio, high * ratio).view(out, inp), float(best_ratio.mean())


# ----------------------------------------------------------------------------- whole model


@torch.no_grad()
def awq_block(block: nn.Module, config, stats: InputStats, chosen: list[str], group_size: int = 64,
              grid: int = 20, clip: bool = True) -> dict[str, Any]:
    """Search and fold the block's scales, clip, and return {local name: Int4Linear} for `chosen`
    (names within the block), with the report. `stats` hold the block's float input statistics."""
    linears = {name: block.get_submodule(name) for name in chosen}
    gram = {name: stats.gram(name) for name in linears}
    rtn_error = {name: output_error(m.weight, rtn_dequantized(m.weight.float(), group_size), gram[name])
                 for name, m in linears.items()}
    groups: dict[str, dict[str, float]] = {}
    for group in scale_groups(block, config):
        readers = [name for name in group.linears if name in linears]
        if not readers or not can_fold(block, group):
            continue
        G = stats.gram(group.linears[0])
        stacked = torch.cat([block.get_submodule(name).weight.float() for name in readers])
        s, alpha, err, rtn = search_scales(stacked, stats.abs_mean(group.linears[0]), G, group_size, grid)
        fold_scales(block, group, s)
        scaled = G / s[:, None] / s[None, :]   # the readers now see x / s
        for name in group.linears:
            if name in gram:
                gram[name] = scaled
        groups[group.name] = {"alpha": alpha, "error_vs_rtn": err / max(rtn, 1e-30)}
    layers, new = {}, {}
    for name, linear in linears.items():
        weight = linear.weight.float().clone()
        if clip and name not in NO_CLIP:
            clipped, ratio = clip_weight(weight, gram[name], group_size)
            linear.weight.copy_(clipped)
        else:
            ratio = 1.0
        new[name] = Int4Linear.from_linear(linear, group_size)
        layers[name] = {"error": output_error(weight, new[name].dequantize(), gram[name]),
                        "rtn_error": rtn_error[name], "clip_ratio": ratio}
    return {"layers": layers, "groups": groups, "new": new}


@torch.no_grad()
def awq_quantize(model: nn.Module, calib_ids: Tensor, group_size: int = 64, skip=("lm_head",), grid: int = 20,
                 clip: bool = True, progress: bool = True, batch_size: int = 8) -> dict[str, Any]:
    """Quantize the model's linear layers (all but `skip`'s, llmlab.model.surgery patterns) in place
    with AWQ into Int4Linear layers. Norm weights and float linears absorb the scales; the token
    embedding is never touched (with tied embeddings it is the head's weight). A targeted lm_head
    gets plain RTN (its input is the final norm's, which feeds nothing else worth scaling for).

    Returns a report: per layer, the relative squared output error ||XW^T - XW'^T||^2 / ||XW^T||^2
    on its calibration inputs, RTN's, and the mean clipping ratio chosen; per block and scale group,
    the alpha chosen and the group's error after scaling as a fraction of RTN's (before clipping)."""
    targets = target_linears(model, skip, calib_ids, group_size)
    was_training = model.training
    model.eval()
    bar = Progress("awq", len(model.blocks), progress)
    layers: dict[str, dict[str, float]] = {}
    groups: dict[str, dict[str, float]] = {}
    try:
        hidden, rope = block_inputs(model, calib_ids, batch_size)
        for i, blk in enumerate(model.blocks):
            chosen = list(block_linears(model, i, targets))
            every = {name: m for name, m in blk.named_modules() if isinstance(m, nn.Linear)}
            with InputStats(every if chosen else {}, abs_sum=True) as stats:
                run_block(blk, hidden, rope, batch_size, out=hidden)   # the float output feeds the next block
            if chosen:
                result = awq_block(blk, model.config, stats, chosen, group_size, grid, clip)
                replace_linears(model, [f"blocks.{i}.{n}" for n in chosen],
                                lambda name, _linear: result["new"][name.split(".", 2)[2]])
                layers.update({f"blocks.{i}.{n}": v for n, v in result["layers"].items()})
                groups.update({f"blocks.{i}.{n}": v for n, v in result["groups"].items()})
            del stats
            bar.step(i + 1)
        if "lm_head" in targets:
            replace_linears(model, ["lm_head"], lambda _name, linear: Int4Linear.from_linear(linear, group_size))
    finally:
        model.train(was_training)
    return {"method": "awq", "bits": 4, "group_size": group_size, "grid": grid, "clip": clip,
            "tokens": calib_ids.numel(), "seconds": round(bar.elapsed(), 2), "layers": layers, "groups": groups}
