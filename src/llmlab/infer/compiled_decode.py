"""A compiled decode step: the whole one-token forward pass as one traced graph (opt-in, `--compile`).

Decode feeds one token, so every linear layer is a matrix-vector product y = W x: each weight is
read once for 2 FLOPs, and the step is bound by memory bandwidth (docs/03-inference.md). In eager
mode on this CPU two things keep it far from that bound:

  1. The library GEMM called with one row streams weights slowly: SmolLM2's 1536 x 576 MLP
     matrices and its 49,152 x 576 output head at ~17 GB/s on one thread (benchmarks/matvec.py).
  2. ~900 small kernels per token (30 layers x norms, rotary, attention, residuals), each with
     framework overhead.

gpt-fast's recipe answers both, one visible step at a time:

  step 1  static KV cache (llmlab.infer.kv_cache, static=True): every decode step has the same
          shapes, so the graph is traced once per cache size and replayed;
  step 2  linear layers in *reduction form* for one row, y[o] = sum_i x[i] * W[o, i], written as
          an elementwise product and a sum. Compiled, that is one loop that streams W and keeps the
          running sums in registers (one thread: 1536 x 576 at ~32 GB/s, the head at ~42 GB/s,
          1.8x and 2.4x the library call). bfloat16 weights are upcast inside the loop, so the
          multiply-add runs in float32;
  step 3  attention written out for one-token steps (`Attention.explicit_decode`): SDPA is an
          opaque library call the compiler cannot fuse; softmax(QK^T)V over the static cache
          becomes part of the graph. The eager prefill keeps SDPA (12% faster there in float32);
  step 4  `torch.compile(fullgraph=True, dynamic=False)` of `llmlab.infer.generate.run_model`.

Measured on SmolLM2-135M, 2 threads (benchmarks/inference.py, docs/03-inference.md): decode
25 -> 65 tok/s in float32 and 37 -> 111 in bfloat16, 2.6x and 3.0x transformers. An ablation on
one thread with the other core busy: steps 1+2+4 (SDPA kept) 32 tok/s, all four 36.

The first call compiles (tens of seconds; inductor caches kernels on disk, so later runs are
faster), and each power-of-two cache size compiles once more. Weights are not copied: MatvecLinear
holds the same Parameter objects, so state_dict keys and tied embeddings are untouched. Inputs with
more than one row (prefill, batches, training) still go through the library GEMM.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.core.errors import LLMLabError
from llmlab.infer.generate import run_model
from llmlab.model.transformer import Attention


def reduction_matvec(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (..., in) with one row, times weight (out, in) transposed -> (..., out), summed in float32.

    In eager mode this would materialise an (out, in) temporary; compiled, it is one fused loop."""
    y = (x.reshape(1, -1).float() * weight.float()).sum(-1)
    return y.to(x.dtype).view(*x.shape[:-1], weight.size(0))


class MatvecLinear(nn.Module):
    """nn.Linear whose single-row forward is the reduction form (step 2 above)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight      # the same Parameter: tying and state_dict keys are kept
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Only inside a compiled graph: run eagerly, the reduction form would materialise the
        # (out, in) product (the prefill's last-position head call would allocate 113 MB).
        # Several rows (prefill, batches, training) are a GEMM's job. On GPUs cuBLAS's
        # matrix-vector kernels already stream weights near bandwidth (gpt-fast keeps F.linear
        # there), so only CPUs use the reduction form.
        if not torch.compiler.is_compiling() or x.numel() != x.size(-1) or x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        y = reduction_matvec(x, self.weight)
        return y if self.bias is None else y + self.bias


def prepare_for_compiled_decode(model: nn.Module) -> int:
    """Steps 2 and 3 in place: MatvecLinear for every nn.Linear, explicit one-token attention. Returns how
    many linear layers were swapped. Outputs are unchanged up to float rounding (tested)."""
    linears = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear]
    for name, linear in linears:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, MatvecLinear(linear))
    for module in model.modules():
        if isinstance(module, Attention):
            module.explicit_decode = True  # one-token steps only: the eager prefill keeps SDPA
    return len(linears)


def compile_decode_step(model: nn.Module) -> Callable[..., torch.Tensor]:
    """Prepare the model and return the compiled `run_model` for `decode_steps(decode_fn=...)`."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    if on_cpu and not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")):
        # inductor would fail only at the first generation, deep inside its C++ build step
        raise LLMLabError("compiling the decode step on CPU needs a C++ compiler (g++ or clang++, or set CXX): "
                          "install one (e.g. apt install g++) or run without --compile")
    prepare_for_compiled_decode(model)
    # One graph per static cache size (powers of two) and batch size; allow more than dynamo's
    # default of 8 before it gives up and falls back to eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    return torch.compile(run_model, fullgraph=True, dynamic=False)
