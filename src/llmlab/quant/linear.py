"""What every weight-only quantized linear layer shares: storage as buffers, two ways to multiply.

A quantized layer keeps its (out, in) weight as small integers plus a few float constants per row
or per group, and never as a float matrix. `forward` picks one of two ways to multiply:

  up to 8 rows on CPU (decode steps, speculative verification), eager or compiled
        `fused`: the dequantization inside the reduction y[o] = sum_i x[i] * w(o, i), as a small
        C++ loop (`llmlab.quant.kernels`) that reads each stored byte once and never materialises
        w. Decode is memory-bound: reading 4.5 bits instead of 32 per weight is the whole speed-up
        (docs/07-quantization.md has the roofline). Without a compiler for the kernels, the same
        loop as a PyTorch expression (`matvec`) is what torch.compile fuses (slower: see kernels.py).
  anything else (prefill, batches, other devices)
        dequantize to the activation dtype, then one library GEMM: for many rows the matmul's
        O(rows x out x in) work hides the O(out x in) dequantization.

Subclasses define `dequantize(dtype)`, `dequantize_rows(rows)` (for a quantized embedding table),
`matvec(x)` and `fused(x)`. Their float constants (scales, minimums) are part of the format: `model.to(bfloat16)`
casts activations' dtype-dependent things (the bias) but must not round the constants, so `_apply`
keeps their dtype and moves only their device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmlab.quant import kernels


def keep_float_constants(module: nn.Module, fn, names: tuple[str, ...], apply) -> nn.Module:
    """module._apply(fn) that moves the named float buffers' device but keeps their dtype: a
    model.to(torch.bfloat16) must not round a format's scales (or NF4's absmax constants) to bf16,
    on top of the quantization's own error. `apply` runs nn.Module's own _apply on the rest."""
    constants = {name: module._buffers.pop(name) for name in names if name in module._buffers}
    apply()
    for name, buf in constants.items():
        moved = fn(buf)
        module._buffers[name] = moved if moved.dtype == buf.dtype else buf.to(moved.device)
    return module


class QuantizedLinear(nn.Module):
    """Base class: in_features, out_features, an optional float bias, and the forward dispatch."""

    float_constants: tuple[str, ...] = ()   # buffers whose dtype is part of the format
    bits: int = 0                            # bits per stored integer code
    int8_activations: bool = False           # the fused kernel rounds x to int8 first (kernels.py)

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        kernels.available()     # build or load the fused kernels now, never inside a compiled graph
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    # subclasses ------------------------------------------------------------------------------
    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        raise NotImplementedError

    def dequantize_rows(self, rows: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        raise NotImplementedError

    def matvec(self, x: Tensor) -> Tensor:
        """x (in,) float32 -> (out,) float32, the dequantization fused into the reduction (PyTorch)."""
        raise NotImplementedError

    def fused(self, x: Tensor) -> Tensor:
        """x (M, in) float32, M <= kernels.MAX_ROWS -> (M, out) float32 through the C++ kernel."""
        raise NotImplementedError

    # shared ----------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // x.size(-1)
        shape = (*x.shape[:-1], self.out_features)
        if x.device.type == "cpu" and rows <= kernels.MAX_ROWS and kernels.ready():
            y = self.fused(x.reshape(rows, -1).float()).to(x.dtype).view(shape)
        elif x.device.type == "cpu" and rows == 1 and torch.compiler.is_compiling():
            y = self.matvec(x.reshape(-1).float()).to(x.dtype).view(shape)
        else:
            y = F.linear(x, self.dequantize(x.dtype))
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def storage_bytes(self) -> int:
        """Bytes of the quantized weight (codes and constants; the bias is not counted)."""
        return sum(b.numel() * b.element_size() for b in self.buffers(recurse=False))

    def bits_per_weight(self) -> float:
        return 8 * self.storage_bytes() / (self.in_features * self.out_features)

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        return keep_float_constants(self, fn, self.float_constants, lambda: super(QuantizedLinear, self)._apply(fn, recurse))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"bits_per_weight={self.bits_per_weight():.3f}")


class QuantizedEmbedding(nn.Module):
    """A token-embedding table read from a quantized (vocab, dim) matrix, a row at a time.

    With tied embeddings the table *is* the output head's weight: `QuantizedEmbedding(lm_head)`
    looks tokens up in the head's own quantized storage, so the model keeps one 4-bit copy of its
    largest matrix instead of a 4-bit head plus a float table (SmolLM2: 16 MB instead of 129 MB)."""

    def __init__(self, table: QuantizedLinear):
        super().__init__()
        self.table = table
        self.num_embeddings, self.embedding_dim = table.out_features, table.in_features
        # An empty tensor that follows model.to(dtype): the rows come out in the activations' dtype
        # (a bfloat16 model's KV cache and norms expect bfloat16 from the embedding).
        self.register_buffer("dtype_probe", torch.empty(0), persistent=False)

    @property
    def weight(self) -> Tensor:
        """The dequantized table (vocab, dim), for code that inspects embeddings."""
        return self.table.dequantize(self.dtype_probe.dtype)

    def forward(self, ids: Tensor) -> Tensor:
        flat = self.table.dequantize_rows(ids.reshape(-1), self.dtype_probe.dtype)
        return flat.view(*ids.shape, self.embedding_dim)


def round_up_fp16(x: Tensor) -> Tensor:
    """The smallest float16 >= x (x >= 0), as float32. Scales are stored in float16 (as GGUF's blocks
    are); rounding them *up* keeps every |w| / scale within the code range, so no weight is clipped."""
    half = x.to(torch.float16)
    half = torch.where(half.float() < x, torch.nextafter(half, torch.tensor(float("inf"), dtype=torch.float16)), half)
    return half.float()


def round_down_fp16(x: Tensor) -> Tensor:
    """The largest float16 <= x, as float32 (for a group minimum: nothing falls below it)."""
    half = x.to(torch.float16)
    half = torch.where(half.float() > x, torch.nextafter(half, torch.tensor(float("-inf"), dtype=torch.float16)), half)
    return half.float()
