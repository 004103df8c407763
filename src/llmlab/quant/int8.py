"""int8 weights: symmetric, one scale per output channel (or per group of `group_size` inputs).

    scale[o, g] = max |W[o, i]| over the group / 127        (stored in float16, rounded up)
    q[o, i]     = round(W[o, i] / scale[o, g])  in -127..127  (int8)
    W'[o, i]    = q[o, i] * scale[o, g]

Symmetric (no zero point) because trained weight rows are centred near zero; -128 is left unused so
the code range is symmetric too. Per output channel, since rows differ in size by up to ~10x and
one scale for the whole matrix would spend most codes on the widest row (Dettmers et al. 2022,
LLM.int8(), arXiv:2208.07339, §3.1, "vector-wise" quantization). The rounding error of each weight
is at most half a step, scale / 2 (`int8_error_bound`).

A group size of 32 is GGUF's Q8_0 block exactly (`llmlab.quant.gguf_native` loads those blocks
into this layer without any float round trip). Storage: 8 bits + 16 / group_size bits per weight:
8.03 per channel at SmolLM2's 576 inputs, 8.5 for Q8_0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from llmlab.core.errors import LLMLabError
from llmlab.quant import kernels
from llmlab.quant.linear import QuantizedLinear, round_up_fp16


def check_group(in_features: int, group_size: int, what: str = "int8") -> None:
    if group_size <= 0 or in_features % group_size:
        divisors = [g for g in (32, 64, 96, 128, 192, 256) if in_features % g == 0]
        raise LLMLabError(f"{what} group size {group_size} does not divide the layer's {in_features} inputs: "
                          f"choose one that does ({', '.join(map(str, divisors)) or in_features})")


def quantize_int8(weight: Tensor, group_size: int | None = None) -> tuple[Tensor, Tensor]:
    """(out, in) float -> (q int8 (out, in), scale float16 (out, in / group_size)). group_size None:
    one scale per output channel."""
    out, inp = weight.shape
    group_size = group_size or inp
    check_group(inp, group_size)
    groups = weight.detach().float().reshape(out, inp // group_size, group_size)
    scale = round_up_fp16(groups.abs().amax(-1) / 127)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))   # an all-zero group stays zero
    q = torch.round(groups / safe[..., None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(out, inp), scale.to(torch.float16)


def dequantize_int8(q: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    out, inp = q.shape
    groups = scale.size(1)
    return (q.view(out, groups, -1).float() * scale.float()[..., None]).view(out, inp).to(dtype)


def int8_error_bound(scale: Tensor, in_features: int) -> Tensor:
    """(out, in) bound on |W - W'|: half a quantization step of each weight's group."""
    return (scale.float() / 2).repeat_interleave(in_features // scale.size(1), dim=1)


class Int8Linear(QuantizedLinear):
    """Linear layer with int8 codes `qweight` (out, in) and float16 `scales` (out, in / group_size)."""

    float_constants = ("scales",)
    bits = 8

    def __init__(self, in_features: int, out_features: int, bias: bool = False, group_size: int | None = None):
        super().__init__(in_features, out_features, bias)
        self.group_size = group_size or in_features
        check_group(in_features, self.group_size)
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.zeros(out_features, in_features // self.group_size, dtype=torch.float16))

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int | None = None) -> "Int8Linear":
        q, scale = quantize_int8(linear.weight, group_size)
        return cls.from_codes(q, scale, linear.bias)

    @classmethod
    def from_codes(cls, q: Tensor, scale: Tensor, bias: Tensor | None = None) -> "Int8Linear":
        """A layer holding exactly these codes and scales (GGUF Q8_0 blocks, or our quantizer's)."""
        out, inp = q.shape
        module = cls(inp, out, bias is not None, inp // scale.size(1))
        module.qweight = q.to(torch.int8).contiguous()
        module.scales = scale.to(torch.float16).contiguous()
        if bias is not None:
            module.bias.data = bias.detach().float().clone()
        return module.to(q.device)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return dequantize_int8(self.qweight, self.scales, dtype)

    def dequantize_rows(self, rows: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        return dequantize_int8(self.qweight[rows], self.scales[rows], dtype)

    def matvec(self, x: Tensor) -> Tensor:
        # y[o] = sum_g scale[o, g] * sum_{i in g} x[i] q[o, i], as one elementwise-then-sum expression
        # that inductor fuses into a single pass over the int8 codes.
        out, groups = self.scales.shape
        w = self.qweight.view(out, groups, -1).float() * self.scales.float()[..., None]
        return (x.view(1, groups, -1) * w).sum((-1, -2))

    def fused(self, x: Tensor) -> Tensor:
        return kernels.int8_matvec(x, self.qweight, self.scales, self.int8_activations)
