"""An optional decode speed-up: batch-1 matrix-vector products in "reduction form", compiled.

Decode feeds one token, so every linear layer is a matrix-vector product y = W x: each weight is
read once for 2 FLOPs, and the step is bound by memory bandwidth, not arithmetic
(docs/03-inference.md). On this CPU (torch 2.13, oneDNN/MKL) the library GEMM called with one row
does not reach that bound for tall matrices: for SmolLM2's output head (49,152 x 576, 113 MB in
float32) `x @ W.T` ran at ~7 GB/s on one thread, while `torch.compile` of the same product written
as an elementwise multiply and a row sum,

    y[o] = sum_i x[i] * W[o, i]          ->   (x[None, :] * W).sum(-1)

generated one fused loop streaming W at ~17 GB/s (2.4x). For small square matrices the library
call is faster. So, gpt-fast style, this is a visible step you switch on, and it *measures* which
form is faster for each distinct weight shape on the machine it runs on, keeping the GEMM where
the GEMM wins:

    from llmlab.infer.fast_decode import enable_fast_decode
    report = enable_fast_decode(engine.model)       # swaps chosen nn.Linear -> MatvecLinear
    for row in report: print(row)                   # shape, dtype, ms per form, choice

Measured so far (2-core shared machine, heavily loaded by other jobs, so treat as provisional):
the head alone, 1 thread, 2.4x (float32) and 1.8x (bfloat16) in isolation; whole SmolLM2 decode
with the head swapped, 1 thread, 32 tokens, median of 3 interleaved rounds: 0.96x (no gain), and
the tuner itself kept the GEMM under load. Hence off by default: call it, read the report.

Weights are not copied: `MatvecLinear` holds the same Parameter objects, so state_dict keys, tied
embeddings and the optimizer are untouched, and `disable_fast_decode` puts the nn.Linear back.
Inputs with more than one row (prefill, batches, training) still go through `F.linear`.
bfloat16 weights are upcast inside the fused loop (the multiply-add happens in float32), so the
result is at least as accurate as the bf16 GEMM.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def reduction_matvec(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (1, in) times weight (out, in) transposed -> (1, out), accumulated in float32.

    Written as broadcast-multiply-and-sum so that the compiler emits one loop that reads each
    weight once and keeps the running sums in registers (no (out, in) temporary is materialised
    once compiled; in eager mode this form would be slow and memory-hungry)."""
    return (x.float()[:, None, :] * weight.float()[None]).sum(-1).to(x.dtype)


def compiled_matvec() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A compiled `reduction_matvec`. Static shapes: one specialised kernel per weight shape."""
    return torch.compile(reduction_matvec, dynamic=False, fullgraph=True)


class MatvecLinear(nn.Module):
    """nn.Linear whose single-row forward uses a compiled reduction-form kernel."""

    def __init__(self, linear: nn.Linear, kernel: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight      # the same Parameter: tying and state_dict keys are kept
        self.bias = linear.bias
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        one_row = x.numel() == x.size(-1)
        if not one_row or (torch.is_grad_enabled() and self.weight.requires_grad):
            return F.linear(x, self.weight, self.bias)   # prefill, batches, training: the GEMM
        y = self.kernel(x.reshape(1, -1), self.weight)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def to_linear(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear


@dataclass
class ShapeChoice:
    """What the tuner measured for one (out, in, dtype) weight shape and what it picked."""

    out_features: int
    in_features: int
    dtype: str
    linear_ms: float
    reduction_ms: float
    chosen: str            # "reduction" or "linear"
    modules: int           # how many layers have this shape

    def as_dict(self) -> dict:
        return asdict(self)


def _median_ms(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    fn()
    fn()  # the first calls compile / warm caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if type(m) is nn.Linear}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


@torch.no_grad()
def enable_fast_decode(model: nn.Module, autotune: bool = True, min_speedup: float = 1.1,
                       min_elements: int = 1 << 22, repeats: int = 20) -> list[ShapeChoice]:
    """Swap nn.Linear layers for MatvecLinear where the reduction form is faster at batch 1.

    Only weights of at least `min_elements` entries are candidates (default 4M: 16 MB in float32,
    larger than the CPU caches): a small matrix stays in cache between tokens and the library
    call already wins there (measured: 576 x 1536 gained nothing). autotune=True times both forms
    for every distinct candidate shape (and dtype) on this machine with the current torch thread
    count, and keeps the GEMM unless the reduction form is at least `min_speedup` times faster.
    autotune=False swaps every candidate (for tests and study). Costs one compile per candidate
    shape (seconds; inductor caches kernels on disk, so later runs are quicker)."""
    groups: dict[tuple[int, int, torch.dtype], list[str]] = {}
    linears = _linears(model)
    for name, linear in linears.items():
        if linear.weight.numel() >= min_elements:
            groups.setdefault((linear.out_features, linear.in_features, linear.weight.dtype), []).append(name)
    # One compiled function for all shapes: dynamo specialises it per shape (each a guarded cache
    # entry), and a model has a handful of big shapes, well under dynamo's recompile limit (8).
    kernel = compiled_matvec()
    report: list[ShapeChoice] = []
    for (out_f, in_f, dtype), names in groups.items():
        weight = linears[names[0]].weight
        linear_ms = reduction_ms = float("nan")
        if autotune:
            x = torch.randn(1, in_f, dtype=dtype, device=weight.device)
            linear_ms = _median_ms(lambda: F.linear(x, weight), repeats)
            reduction_ms = _median_ms(lambda: kernel(x, weight), repeats)
            use = reduction_ms * min_speedup <= linear_ms
        else:
            use = True
        if use:
            for name in names:
                _replace(model, name, MatvecLinear(linears[name], kernel))
        report.append(ShapeChoice(out_f, in_f, str(dtype).removeprefix("torch."), linear_ms, reduction_ms,
                                  "reduction" if use else "linear", len(names)))
    return report


def disable_fast_decode(model: nn.Module) -> int:
    """Put plain nn.Linear layers back; returns how many were swapped back."""
    swapped = [(name, m) for name, m in model.named_modules() if isinstance(m, MatvecLinear)]
    for name, module in swapped:
        _replace(model, name, module.to_linear())
    return len(swapped)
