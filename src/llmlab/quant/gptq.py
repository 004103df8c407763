"""GPTQ: round weights one input column at a time, pushing each rounding error onto the columns
not yet rounded (Frantar et al. 2022, "GPTQ", arXiv:2210.17323).

Round-to-nearest ("RTN", `llmlab.quant.int4`) minimises each weight's own error. What matters is
the layer's output on real inputs X (tokens x in), ||X W^T - X W'^T||^2, and for a row w that is
(w - w') H (w - w')^T / 2 with H = 2 X^T X / n: inputs that move together (correlated columns of X)
let the error of one weight be cancelled by adjusting the others. Optimal Brain Quantization
(Frantar & Alistarh 2022) rounds column j, then updates the remaining columns by

    w[j+1:] -= (w_j - q_j) / [H^-1]_jj * [H^-1]_{j, j+1:}

the least-squares correction given the inverse Hessian of the remaining columns. GPTQ's three
changes make that fast enough for large layers (paper §3):
  1. every row uses the same column order, so the inverse Hessians of the shrinking column sets
     are rows of one upper Cholesky factor U of H^-1 (H^-1 = U^T U), computed once;
  2. updates are lazy: within a block of 128 columns they are applied column by column, to the
     rest of the matrix once per block, as one matrix product (memory-bound -> compute-bound);
  3. the Cholesky form is numerically stable, with H dampened by 1% of its mean diagonal.

Group-wise grids (our int4 layout: one (scale, min) per `group_size` inputs) are chosen when the
loop reaches a group's first column, from the weights *as updated so far*, so the grid fits the
values that will be rounded. act_order (the paper's "desc_act"): columns with a large H_jj (inputs
with much energy) go first, while many columns are still left to absorb their error. With groups,
that order would scatter each group's grid over the whole loop, so the grids are fixed up front
from the original weights ("static groups"), which keeps the stored layout plain group-wise.

Across the model (paper §4): block i is quantized from Hessians of its inputs, then run again,
quantized, to give block i + 1 the inputs it will see at inference. Within a block all layers take
their Hessians from one pass (the paper's setup; AutoGPTQ's "true sequential" re-runs the block
after each sub-layer, at 4 passes per block instead of 1).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from llmlab.core.errors import LLMLabError
from llmlab.model.surgery import replace_linears
from llmlab.quant.calibration import (InputStats, Progress, block_inputs, block_linears, run_block,
                                      target_linears)
from llmlab.quant.int4 import Int4Linear, group_params, quantize_to_grid
from llmlab.quant.int8 import Int8Linear, check_group
from llmlab.quant.linear import round_up_fp16

# ----------------------------------------------------------------------------- grids


def grid_params(groups: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """(..., group_size) -> (scale, min) per group: int4's asymmetric grid, or int8's symmetric
    one (min 0, scale = max|w| / 127)."""
    if bits == 4:
        return group_params(groups)
    scale = round_up_fp16(groups.abs().amax(-1) / 127)
    return scale, torch.zeros_like(scale)


def to_codes(w: Tensor, scale: Tensor, low: Tensor, bits: int) -> Tensor:
    """Codes of w on the grid low + scale * q: 0..15 for int4, -127..127 for int8."""
    if bits == 4:
        return quantize_to_grid(w, scale, low)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(w / safe).clamp(-127, 127)


def rtn_dequantized(weight: Tensor, group_size: int, bits: int = 4) -> Tensor:
    """Round-to-nearest, dequantized: the baseline GPTQ is measured against."""
    out, inp = weight.shape
    groups = weight.float().reshape(out, inp // group_size, group_size)
    scale, low = grid_params(groups, bits)
    q = to_codes(groups, scale[..., None], low[..., None], bits)
    return (q * scale[..., None] + low[..., None]).reshape(out, inp)


def output_error(weight: Tensor, approx: Tensor, H: Tensor) -> float:
    """||X W^T - X W'^T||^2 / ||X W^T||^2 through H ~ X^T X: tr(D H D^T) / tr(W H W^T), D = W - W'."""
    diff = (weight.float() - approx.float())
    num = ((diff @ H) * diff).sum()
    den = ((weight.float() @ H) * weight.float()).sum()
    return float(num / den.clamp(min=1e-30))


# ----------------------------------------------------------------------------- one layer


@torch.no_grad()
def gptq_layer(weight: Tensor, H: Tensor, group_size: int = 64, bits: int = 4, act_order: bool = False,
               damp: float = 0.01, block: int = 128) -> tuple[Tensor, Tensor, Tensor | None]:
    """Quantize one (out, in) weight given the Hessian H (in, in) of its inputs (2 X^T X / n).

    Returns codes (out, in) (uint8 0..15 for bits=4, int8 -127..127 for bits=8) and float16
    (scale, min) (out, in / group_size); min is None for int8 (symmetric). They are what
    Int4Linear.from_codes / Int8Linear.from_codes take."""
    if bits not in (4, 8):
        raise LLMLabError(f"GPTQ supports bits 4 (int4) or 8 (int8), not {bits}")
    out, inp = weight.shape
    check_group(inp, group_size, f"int{bits}")
    if H.shape != (inp, inp):
        raise LLMLabError(f"Hessian of shape {tuple(H.shape)} does not fit a weight with {inp} inputs")
    W = weight.detach().float().clone()       # never in place: a tied head's weight is the embedding
    H = H.detach().float().clone()
    n_groups = inp // group_size
    # An input that is always zero carries no information: its weights cannot matter, so they are
    # set to 0 and H_jj to 1 (which keeps H invertible without touching the other columns).
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    scale = torch.zeros(out, n_groups, device=W.device)
    low = torch.zeros(out, n_groups, device=W.device)
    perm = None
    if act_order:
        # Static groups: the grids come from the unpermuted, not yet updated weights.
        scale, low = grid_params(W.view(out, n_groups, group_size), bits)
        perm = torch.argsort(H.diagonal(), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
        group_of = perm // group_size           # column j of the permuted W sits in group group_of[j]
    H.diagonal().add_(damp * H.diagonal().mean())
    L, info = torch.linalg.cholesky_ex(H)
    if info:
        raise LLMLabError(f"GPTQ's Hessian is not positive definite even with damp={damp}: raise damp (e.g. 0.1)")
    U = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)   # H^-1 = U^T U
    Q = torch.zeros_like(W)
    # Lazy-update blocks are whole groups, so a group's grid is always chosen from fully updated weights.
    block = group_size * max(1, block // group_size)
    for i1 in range(0, inp, block):
        i2 = min(i1 + block, inp)
        W1, U1 = W[:, i1:i2], U[i1:i2, i1:i2]   # W1 is a view: updates land in W
        errors = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if perm is None:
                g = col // group_size
                if col % group_size == 0:
                    scale[:, g], low[:, g] = grid_params(W1[:, i:i + group_size], bits)
                s, m = scale[:, g], low[:, g]
            else:
                s, m = scale[:, group_of[col]], low[:, group_of[col]]
            w = W1[:, i]
            q = to_codes(w, s, m, bits)
            Q[:, col] = q
            err = (w - (q * s + m)) / U1[i, i]
            W1[:, i:].addr_(err, U1[i, i:], alpha=-1.0)   # compensate within the block
            errors[:, i] = err
        W[:, i2:].addmm_(errors, U[i1:i2, i2:], alpha=-1.0)  # the block's updates, once, to the rest
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    codes = Q.to(torch.uint8) if bits == 4 else Q.to(torch.int8)
    return codes, scale.to(torch.float16), (low.to(torch.float16) if bits == 4 else None)


def dequantized(q: Tensor, scale: Tensor, low: Tensor | None) -> Tensor:
    """The weight gptq_layer's codes stand for."""
    out, inp = q.shape
    groups = q.float().view(out, scale.size(1), -1) * scale.float()[..., None]
    if low is not None:
        groups = groups + low.float()[..., None]
    return groups.view(out, inp)


def _layer(q: Tensor, scale: Tensor, low: Tensor | None, bias: Tensor | None) -> nn.Module:
    return Int4Linear.from_codes(q, scale, low, bias) if low is not None else Int8Linear.from_codes(q, scale, bias)


# ----------------------------------------------------------------------------- whole model


@torch.no_grad()
def gptq_quantize(model: nn.Module, calib_ids: Tensor, bits: int = 4, group_size: int = 64,
                  skip=("lm_head",), act_order: bool = False, damp: float = 0.01, block: int = 128,
                  progress: bool = True, batch_size: int = 8) -> dict[str, Any]:
    """Quantize the model's linear layers (all but `skip`'s, llmlab.model.surgery patterns) in place
    with GPTQ, into Int4Linear (bits=4) or Int8Linear (bits=8) layers.

    calib_ids (n_seq, T): calibration_ids(...). Returns a report: per layer, the relative squared
    output error ||XW^T - XW'^T||^2 / ||XW^T||^2 on its calibration inputs, and RTN's on the same
    inputs. Load average matters: one block costs two passes over the calibration tokens."""
    if bits not in (4, 8):
        raise LLMLabError(f"GPTQ supports bits 4 (int4) or 8 (int8), not {bits}")
    targets = target_linears(model, skip, calib_ids, group_size, bits)
    was_training = model.training
    model.eval()
    n_blocks = len(model.blocks)
    bar = Progress("gptq", n_blocks, progress)
    layers: dict[str, dict[str, float]] = {}

    def quantize(name: str, linear: nn.Linear, H: Tensor) -> None:
        q, scale, low = gptq_layer(linear.weight, H, group_size, bits, act_order, damp, block)
        weight = linear.weight.float()
        layers[name] = {"error": output_error(weight, dequantized(q, scale, low), H),
                        "rtn_error": output_error(weight, rtn_dequantized(weight, group_size, bits), H)}
        new = _layer(q, scale, low, linear.bias)
        replace_linears(model, [name], lambda _name, _linear: new)

    try:
        hidden, rope = block_inputs(model, calib_ids, batch_size)
        head = "lm_head" in targets
        for i, blk in enumerate(model.blocks):
            chosen = block_linears(model, i, targets)
            if chosen:
                with InputStats(chosen) as stats:
                    run_block(blk, hidden, rope, batch_size)
                for local, linear in chosen.items():
                    quantize(f"blocks.{i}.{local}", linear, stats.gram(local) * (2 / stats.count(local)))
                del stats
            if i + 1 < n_blocks or head:
                run_block(blk, hidden, rope, batch_size, out=hidden)   # the quantized block feeds the next
            bar.step(i + 1)
        if head:
            H = torch.zeros(model.config.n_embd, model.config.n_embd, device=hidden.device)
            for start in range(0, hidden.size(0), batch_size):
                x = model.final_norm(hidden[start:start + batch_size]).float().reshape(-1, H.size(0))
                H.addmm_(x.T, x)
            quantize("lm_head", model.lm_head, H * (2 / (hidden.size(0) * hidden.size(1))))
    finally:
        model.train(was_training)
    return {"method": "gptq", "bits": bits, "group_size": group_size, "act_order": act_order, "damp": damp,
            "tokens": calib_ids.numel(), "seconds": round(bar.elapsed(), 2), "layers": layers}
