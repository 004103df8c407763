"""NormalFloat-4 (NF4), the 4-bit weight format of QLoRA (Dettmers et al. 2023, arXiv:2305.14314).

A weight is flattened row-major and cut into blocks of `block_size` (64) values. Each block is divided by
its absolute maximum ("absmax") so it lies in [-1, 1], and each value becomes the index (0..15) of the
nearest of the 16 NF4 levels. Storage is two indices per byte plus one float32 absmax per block:
4 + 32/64 = 4.5 bits per parameter. Double quantization (paper §3) stores the absmax constants in 8 bits
too, which brings that to 4 + 8/64 + 32/(64*256) ~ 4.127 bits.

Values and rounding match bitsandbytes' `quantize_4bit(..., quant_type="nf4")`: same levels, same blocks,
ties to the lower level, and the same nibble order (element 2i in the high nibble of byte i, element 2i+1
in the low nibble). Our double quantization is simpler than the paper's (see `_double_quantize`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmlab.core.errors import LLMLabError

# Probability of the outermost quantile. p = 1 would give +inf, so the paper's construction spaces the
# quantiles evenly between 0.5 and a tail probability just below 1. Natural choices are 1 - 1/(2*15) and
# 1 - 1/(2*16); the reference implementation takes their midpoint rounded to 7 digits.
NF4_OFFSET = 0.9677083


def _nf4_levels(offset: float = NF4_OFFSET) -> Tensor:
    """The 16 NF4 levels, sorted ascending, in [-1, 1] with an exact 0.

    Why normal quantiles: pretrained weights are close to zero-mean normal, and so is each block once
    divided by its absmax. Placing level i at the i-th quantile of N(0, 1) gives every level an equal
    share of probability mass, so all 16 codes are used about equally often: no code is wasted on values
    that rarely occur (quantile quantization, paper §3).

    Why an exact zero: zeros (padding, pruned or zero-initialised weights) must stay exactly zero, and a
    symmetric set of 16 quantiles has no zero. So the set is asymmetric: 8 positive quantiles from 9
    probabilities evenly spaced in [0.5, offset], 7 negative ones from 8, and the shared zero (p = 0.5)
    once: 8 + 7 + 1 = 16. Dividing by the largest quantile puts the outer levels at exactly -1 and +1,
    so each block's absmax element is stored without error.
    """

    def positive_quantiles(count: int) -> Tensor:  # outermost first; drops p = 0.5, the zero
        probs = torch.linspace(offset, 0.5, count + 1, dtype=torch.float64)[:-1]
        return torch.special.ndtri(probs)  # inverse CDF of N(0, 1)

    zero = torch.zeros(1, dtype=torch.float64)
    levels = torch.cat([-positive_quantiles(7), zero, positive_quantiles(8)]).sort().values
    return (levels / levels.max()).to(torch.float32)


NF4_LEVELS: Tensor = _nf4_levels()
# Decision boundaries between neighbouring levels; nearest-level rounding is a bucketize against these.
_MIDPOINTS = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2
# Worst rounding error for a value in [-1, 1]: half the widest gap (between -1 and the next level).
NF4_MAX_HALF_GAP: float = float(NF4_LEVELS.diff().max()) / 2
# The two levels each byte value decodes to (high nibble first): one table lookup per byte instead
# of unpacking nibbles into a full-size int64 index tensor: 3.4 ms instead of 11.9 ms for a
# 1536 x 576 layer on one CPU thread (index_select; plain [] indexing of a 2-D table is slower).
_BYTE_LEVELS = torch.stack([NF4_LEVELS[torch.arange(256) >> 4], NF4_LEVELS[torch.arange(256) & 0xF]], dim=1)


def nf4_error_bound(absmax: Tensor, absmax_error: Tensor | float = 0.0) -> Tensor:
    """Per-block bound on |w - dequantize(quantize(w))| for every element of a block.

    A value scaled by the block's absmax a rounds to within a * NF4_MAX_HALF_GAP. With double quant the
    decoder uses a' with |a - a'| <= absmax_error, adding |level| * |a - a'| <= absmax_error. Pass the
    true absmax, or the reconstructed one with its error (the true a is then at most a' + absmax_error).
    """
    return (absmax + absmax_error) * NF4_MAX_HALF_GAP + absmax_error


def _check_layout(shape: tuple[int, ...], block_size: int, dq_block_size: int) -> None:
    numel = 1
    for size in shape:
        numel *= size
    if block_size <= 0 or block_size % 2:
        raise LLMLabError(f"NF4 block_size must be a positive even number (two codes per byte), got {block_size}")
    if dq_block_size <= 0:
        raise LLMLabError(f"NF4 dq_block_size must be positive, got {dq_block_size}")
    if numel == 0 or numel % block_size:
        raise LLMLabError(
            f"cannot NF4-quantize a weight of shape {tuple(shape)} ({numel} elements) in blocks of "
            f"block_size={block_size}: the element count must be a positive multiple of the block size; "
            f"pick a block size that divides {numel} (64 divides most layer widths)")


def _pack(indices: Tensor) -> Tensor:
    """Two 4-bit indices per byte: element 2i in the high nibble, 2i+1 in the low (as bitsandbytes)."""
    pairs = indices.to(torch.uint8).view(-1, 2)
    return (pairs[:, 0] << 4) | pairs[:, 1]


def _unpack(codes: Tensor) -> Tensor:
    return torch.stack([codes >> 4, codes & 0xF], dim=1).flatten().long()


def _double_quantize(absmax: Tensor, dq_block_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """absmax -> (int8 codes, float32 scale per dq block, float32 mean).

    The paper stores (absmax - mean) as 8-bit floats in blocks of 256. We use a symmetric linear int8
    code per block instead: code = round((absmax - mean) / scale), scale = max|absmax - mean| / 127.
    That is enough because the constants are positive and narrow (the max of 64 |normal| samples varies
    by only ~±20% around its mean), so a uniform grid resolves them to ~0.3% of the absmax, far below
    NF4's own rounding error (up to ~15% of the absmax); a float code's dynamic range buys nothing here.
    """
    mean = absmax.mean()
    centred = absmax - mean
    groups = F.pad(centred, (0, -centred.numel() % dq_block_size)).view(-1, dq_block_size)
    scales = groups.abs().amax(dim=1) / 127
    codes = torch.round(groups / scales.clamp(min=1e-38)[:, None]).clamp(-127, 127).to(torch.int8)
    return codes.flatten()[: absmax.numel()], scales, mean


@dataclass
class NF4Weight:
    """An NF4-quantized tensor. Exactly one of `absmax` / (`absmax_codes`, `absmax_scales`, `absmax_mean`)
    is set, depending on whether the absmax constants are double-quantized."""

    codes: Tensor  # uint8 (numel // 2,), see _pack for the nibble order
    shape: tuple[int, ...]
    block_size: int
    absmax: Tensor | None = None  # float32 (n_blocks,)
    absmax_codes: Tensor | None = None  # int8 (n_blocks,): round((absmax - mean) / scale)
    absmax_scales: Tensor | None = None  # float32 (ceil(n_blocks / dq_block_size),)
    absmax_mean: Tensor | None = None  # float32, 0-d
    dq_block_size: int = 256

    @property
    def double_quant(self) -> bool:
        return self.absmax_codes is not None

    def numel(self) -> int:
        return self.codes.numel() * 2

    def tensors(self) -> dict[str, Tensor]:
        names = ("codes", "absmax", "absmax_codes", "absmax_scales", "absmax_mean")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def block_absmax(self) -> Tensor:
        """The per-block absmax the decoder uses (reconstructed from 8 bits under double quant)."""
        if not self.double_quant:
            return self.absmax
        scales = self.absmax_scales.repeat_interleave(self.dq_block_size)[: self.absmax_codes.numel()]
        return self.absmax_mean + self.absmax_codes.float() * scales

    def absmax_error_bound(self) -> Tensor:
        """Per-block bound on |true absmax - block_absmax()|: half a double-quant step, else 0."""
        if not self.double_quant:
            return torch.zeros_like(self.absmax)
        return (self.absmax_scales / 2).repeat_interleave(self.dq_block_size)[: self.absmax_codes.numel()]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def bits_per_param(self) -> float:
        return 8 * self.nbytes() / self.numel()

    def to_dict(self) -> dict[str, Tensor | int | tuple[int, ...]]:
        """Flat dict of tensors plus plain ints (and the shape tuple); torch.save-able."""
        return {**self.tensors(), "shape": tuple(self.shape), "block_size": self.block_size,
                "dq_block_size": self.dq_block_size, "double_quant": int(self.double_quant)}

    @classmethod
    def from_dict(cls, state: dict) -> NF4Weight:
        fields = {k: v for k, v in state.items() if k != "double_quant"}
        return cls(**{**fields, "shape": tuple(int(s) for s in state["shape"])})


def quantize_nf4(weight: Tensor, block_size: int = 64, double_quant: bool = True,
                 dq_block_size: int = 256) -> NF4Weight:
    """Quantize `weight` (any shape, numel divisible by block_size) to NF4 in row-major blocks."""
    shape = tuple(weight.shape)
    _check_layout(shape, block_size, dq_block_size)
    if not weight.is_floating_point() or not bool(torch.isfinite(weight).all()):
        raise LLMLabError(f"NF4 needs a finite floating-point weight; got dtype {weight.dtype} of shape {shape} "
                          "(with inf/NaN values, or not floating point)")
    blocks = weight.detach().float().reshape(-1, block_size)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks / absmax.clamp(min=1e-38)[:, None]  # an all-zero block stays zero
    # Nearest level; a value exactly on a midpoint goes to the lower level (bucketize, right=False).
    indices = torch.bucketize(scaled, _MIDPOINTS.to(weight.device))
    codes = _pack(indices.flatten())
    if not double_quant:
        return NF4Weight(codes, shape, block_size, absmax=absmax, dq_block_size=dq_block_size)
    absmax_codes, scales, mean = _double_quantize(absmax, dq_block_size)
    return NF4Weight(codes, shape, block_size, absmax_codes=absmax_codes, absmax_scales=scales,
                     absmax_mean=mean, dq_block_size=dq_block_size)


def dequantize_nf4(q: NF4Weight, dtype: torch.dtype = torch.float32) -> Tensor:
    """Rebuild the weight: level[index] * block absmax, computed in float32, returned in `dtype`."""
    levels = _BYTE_LEVELS.to(q.codes.device).index_select(0, q.codes.int()).view(-1, q.block_size)  # (blocks, block_size)
    return (levels * q.block_absmax()[:, None]).view(q.shape).to(dtype)


class _DequantizeMatmul(torch.autograd.Function):
    """y = x W^T with W dequantized on the fly, in forward and again in backward.

    A plain F.linear(x, dequantize()) would keep each layer's dequantized float W alive for the
    backward pass (autograd saves it to compute the input's gradient), so during backward the
    whole model would sit in memory in float, which is what QLoRA sets out to avoid. Dequantizing
    again in backward costs a little compute and keeps only the 4-bit codes resident (bitsandbytes
    does the same)."""

    @staticmethod
    def forward(ctx, x: Tensor, layer: "NF4Linear") -> Tensor:
        ctx.layer = layer
        return F.linear(x, layer.dequantize(x.dtype))

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        return grad_out @ ctx.layer.dequantize(grad_out.dtype), None


# Float buffers that are part of the storage format: module dtype casts must not round them.
_FLOAT_CONSTANTS = ("absmax", "absmax_scales", "absmax_mean")


class NF4Linear(nn.Module):
    """A frozen linear layer whose (out, in) weight is stored as NF4 buffers (QLoRA's base layers).

    forward dequantizes to the activation dtype on every call and runs F.linear: storage in 4 bits,
    compute in bf16/fp32. Gradients flow to the input (for LoRA adapters upstream) but nothing here
    trains. The constructor builds zeroed buffers whose shapes depend only on (in, out, block_size,
    double_quant, dq_block_size), so a fresh module can load a saved state_dict.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, block_size: int = 64,
                 double_quant: bool = True, dq_block_size: int = 256, device: torch.device | str | None = None):
        super().__init__()
        _check_layout((out_features, in_features), block_size, dq_block_size)
        self.in_features, self.out_features = in_features, out_features
        self.block_size, self.double_quant, self.dq_block_size = block_size, double_quant, dq_block_size
        n_blocks = in_features * out_features // block_size
        self.register_buffer("codes", torch.zeros(n_blocks * block_size // 2, dtype=torch.uint8, device=device))
        if double_quant:
            self.register_buffer("absmax_codes", torch.zeros(n_blocks, dtype=torch.int8, device=device))
            n_groups = -(-n_blocks // dq_block_size)
            self.register_buffer("absmax_scales", torch.zeros(n_groups, device=device))
            self.register_buffer("absmax_mean", torch.zeros((), device=device))
        else:
            self.register_buffer("absmax", torch.zeros(n_blocks, device=device))
        bias_tensor = torch.zeros(out_features, device=device) if bias else None
        self.bias = nn.Parameter(bias_tensor, requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, block_size: int = 64, double_quant: bool = True,
                    dq_block_size: int = 256) -> NF4Linear:
        if not isinstance(linear, nn.Linear):
            raise LLMLabError(f"NF4Linear.from_linear needs an nn.Linear, got {type(linear).__name__}")
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, block_size=block_size,
                     double_quant=double_quant, dq_block_size=dq_block_size, device=linear.weight.device)
        q = quantize_nf4(linear.weight, block_size, double_quant, dq_block_size)
        with torch.no_grad():
            for name, tensor in q.tensors().items():
                getattr(module, name).copy_(tensor)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        return module

    def weight_nf4(self) -> NF4Weight:
        stored = {name: buf for name, buf in self.named_buffers(recurse=False)}
        return NF4Weight(shape=(self.out_features, self.in_features), block_size=self.block_size,
                         dq_block_size=self.dq_block_size, **stored)

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        return dequantize_nf4(self.weight_nf4(), dtype or torch.float32)

    def dequantize_rows(self, rows: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Rows of the weight (a tied embedding table looks tokens up here): whole blocks per row
        when block_size divides in_features, else via the full matrix."""
        if self.in_features % self.block_size:
            return self.dequantize(dtype)[rows]
        codes = self.codes.view(self.out_features, -1)[rows].reshape(-1)
        absmax = self.weight_nf4().block_absmax().view(self.out_features, -1)[rows]
        levels = _BYTE_LEVELS.to(codes.device).index_select(0, codes.int()).view(len(rows), -1, self.block_size)
        return (levels * absmax[..., None]).view(len(rows), -1).to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        out = _DequantizeMatmul.apply(x, self)
        return out if self.bias is None else out + self.bias.to(x.dtype)

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # model.to(torch.bfloat16) casts the bias but not the absmax constants (llmlab.quant.linear)
        from llmlab.quant.linear import keep_float_constants
        return keep_float_constants(self, fn, _FLOAT_CONSTANTS, lambda: super(NF4Linear, self)._apply(fn, recurse))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"block_size={self.block_size}, double_quant={self.double_quant}, "
                f"bits_per_param={self.weight_nf4().bits_per_param():.3f}")
