"""int4 weights: asymmetric, group-wise, two codes per byte (round-to-nearest, "RTN").

Each row is cut into groups of `group_size` consecutive inputs; each group stores a float16 step and
a float16 minimum, and each weight a 4-bit code q in 0..15:

    min[o, g]   = min of the group                        (float16, rounded down)
    scale[o, g] = (max - min) / 15                        (float16, rounded up)
    q[o, i]     = round((W[o, i] - min) / scale)           in 0..15
    W'[o, i]    = q[o, i] * scale + min

Why groups: 16 levels cannot cover a whole row well, because one large weight would stretch the
step for all the others; a group of 32-192 inputs keeps outliers local, for 16 / group_size bits
per weight per constant (Frantar et al. 2022 and Dettmers & Zettlemoyer 2023, arXiv:2212.09720,
found groups of ~64-128 the best trade at 4 bits). Why asymmetric (a minimum, not just a scale):
a group of 32-64 weights is rarely centred on zero, and a shifted grid spends no levels on values
the group does not have. Rounding to nearest errs by at most scale / 2 (`int4_error_bound`).

This (scale, min) form is GGUF's Q4_1 exactly (block 32), and Q4_0's (d, offset -8) is the case
min = -8 * scale, so `llmlab.quant.gguf_native` puts the file's own blocks in this layer unchanged.
GPTQ and AWQ (`llmlab.quant.gptq`, `llmlab.quant.awq`) choose the codes better, into this layout.

Packing: element 2j of a row in the low nibble of byte j, element 2j + 1 in the high nibble.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from llmlab.core.errors import LLMLabError
from llmlab.quant.int8 import check_group
from llmlab.quant import kernels
from llmlab.quant.linear import QuantizedLinear, round_down_fp16, round_up_fp16

LEVELS = 15   # the largest 4-bit code


def pack_int4(q: Tensor) -> Tensor:
    """(out, in) codes 0..15 -> (out, in / 2) uint8, element 2j low nibble, 2j + 1 high."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: Tensor) -> Tensor:
    """(out, in / 2) uint8 -> (out, in) uint8 codes."""
    return torch.stack([packed & 0x0F, packed >> 4], dim=-1).view(packed.size(0), -1)


def group_params(groups: Tensor) -> tuple[Tensor, Tensor]:
    """(..., group_size) float -> (scale, min) (...,) float32, float16-representable: the grid that
    covers [min, max] of each group with 16 levels."""
    low = round_down_fp16(groups.amin(-1))
    scale = round_up_fp16((groups.amax(-1) - low) / LEVELS)
    return scale, low


def quantize_to_grid(w: Tensor, scale: Tensor, low: Tensor) -> Tensor:
    """Codes 0..15 of w on the grid low + scale * q (scale, low broadcast against w)."""
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))   # a constant group: every code 0
    return torch.round((w - low) / safe).clamp(0, LEVELS)


def quantize_int4(weight: Tensor, group_size: int = 64) -> tuple[Tensor, Tensor, Tensor]:
    """(out, in) float -> (codes uint8 (out, in) in 0..15, scale, min float16 (out, in / group_size))."""
    out, inp = weight.shape
    check_group(inp, group_size, "int4")
    groups = weight.detach().float().reshape(out, inp // group_size, group_size)
    scale, low = group_params(groups)
    q = quantize_to_grid(groups, scale[..., None], low[..., None])
    return q.reshape(out, inp).to(torch.uint8), scale.to(torch.float16), low.to(torch.float16)


def dequantize_int4(packed: Tensor, scale: Tensor, low: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    out, groups = scale.shape
    q = unpack_int4(packed).view(out, groups, -1).float()
    return (q * scale.float()[..., None] + low.float()[..., None]).view(out, -1).to(dtype)


def int4_error_bound(scale: Tensor, in_features: int) -> Tensor:
    """(out, in) bound on |W - W'| for round-to-nearest codes: half a step of each weight's group."""
    return (scale.float() / 2).repeat_interleave(in_features // scale.size(1), dim=1)


class Int4Linear(QuantizedLinear):
    """Linear layer with packed 4-bit codes `qweight` (out, in / 2) uint8 and float16 `scales` and
    `mins` (out, in / group_size)."""

    float_constants = ("scales", "mins")
    bits = 4

    def __init__(self, in_features: int, out_features: int, bias: bool = False, group_size: int = 64):
        super().__init__(in_features, out_features, bias)
        check_group(in_features, group_size, "int4")
        if group_size % 2:
            raise LLMLabError(f"int4 group size {group_size} must be even (two codes per byte): choose 32, 64 or 128")
        self.group_size = group_size
        groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(out_features, groups, dtype=torch.float16))
        self.register_buffer("mins", torch.zeros(out_features, groups, dtype=torch.float16))

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 64) -> "Int4Linear":
        q, scale, low = quantize_int4(linear.weight, group_size)
        return cls.from_codes(q, scale, low, linear.bias)

    @classmethod
    def from_codes(cls, q: Tensor, scale: Tensor, low: Tensor, bias: Tensor | None = None,
                   packed: bool = False) -> "Int4Linear":
        """A layer holding exactly these codes ((out, in) values 0..15, or already packed) and constants."""
        out = q.size(0)
        inp = q.size(1) * (2 if packed else 1)
        module = cls(inp, out, bias is not None, inp // scale.size(1))
        module.qweight = (q if packed else pack_int4(q)).to(torch.uint8).contiguous()
        module.scales = scale.to(torch.float16).contiguous()
        module.mins = low.to(torch.float16).contiguous()
        if bias is not None:
            module.bias.data = bias.detach().float().clone()
        return module.to(q.device)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return dequantize_int4(self.qweight, self.scales, self.mins, dtype)

    def dequantize_rows(self, rows: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        return dequantize_int4(self.qweight[rows], self.scales[rows], self.mins[rows], dtype)

    def matvec(self, x: Tensor) -> Tensor:
        # y[o] = sum_g (scale[o, g] * sum_{i in g} x[i] q[o, i] + min[o, g] * sum_{i in g} x[i]).
        # The nibbles are unpacked inside the reduction, so each byte is read once; the per-group
        # sums of x are tiny (in / group_size values) and shared by every row.
        out, groups = self.scales.shape
        q = torch.stack([self.qweight & 0x0F, self.qweight >> 4], dim=-1).view(out, groups, -1).float()
        xg = x.view(1, groups, -1)
        dot = (xg * q).sum(-1)                                        # (out, groups)
        return (dot * self.scales.float() + xg.sum(-1) * self.mins.float()).sum(-1)

    def fused(self, x: Tensor) -> Tensor:
        return kernels.int4_matvec(x, self.qweight, self.scales, self.mins, self.int8_activations)
