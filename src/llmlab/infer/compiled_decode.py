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

Measured on SmolLM2-135M, 2 threads (benchmarks/inference.py, docs/03-inference.md): on an AMD
EPYC without AVX-512, decode 2.16x (float32) and 2.06x (bfloat16) transformers' own static cache +
torch.compile path in the same run, after a compile of 84-108 s cold, 13-18 s warm; on an earlier
AVX-512 EPYC 2.6x / 3.0x transformers eager. Ablation: benchmarks/decode_ablation.py.

Compiling is paid once per (batch size, cache size) graph, and never inside a user's reply:
`CompiledDecode.prepare` runs the step on a dummy prompt first (`warm_up`) and returns the seconds
it took, which the engine reports as `timings["compile_s"]`, apart from decode speed. Cold (empty
inductor cache) that is ~55 s for SmolLM2 on the AMD EPYC machines; inductor then keeps the
compiled kernels and FX graphs in a stable per-user directory (`inductor_cache_dir`), so the next
process pays seconds (docs/03-inference.md has both figures). Weights are not copied: MatvecLinear
holds the same Parameter objects, so state_dict keys and tied embeddings are untouched. Inputs with
more than one row (prefill, batches, training) still go through the library GEMM.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.core.errors import LLMLabError
from llmlab.infer.generate import cache_length, decode_steps, run_model
from llmlab.infer.sampling import SamplingConfig
from llmlab.model.surgery import replace_linears
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
    # Plain nn.Linears only (not layers another step already replaced); MatvecLinear keeps the same
    # Parameter, so a tied head stays tied (llmlab.model.surgery).
    names = [name for name, m in model.named_modules() if type(m) is nn.Linear]
    replace_linears(model, names, lambda name, linear: MatvecLinear(linear))
    for module in model.modules():
        if isinstance(module, Attention):
            module.explicit_decode = True  # one-token steps only: the eager prefill keeps SDPA
    return len(names)


def compile_decode_step(model: nn.Module) -> Callable[..., torch.Tensor]:
    """Prepare the model and return the compiled `run_model` for `decode_steps(decode_fn=...)`."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    if on_cpu and not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")):
        # inductor would fail only at the first generation, deep inside its C++ build step
        raise LLMLabError("compiling the decode step on CPU needs a C++ compiler (g++ or clang++, or set CXX): "
                          "install one (e.g. apt install g++) or run without --compile")
    use_stable_inductor_cache()
    prepare_for_compiled_decode(model)
    # One graph per static cache size (powers of two) and batch size; allow more than dynamo's
    # default of 8 before it gives up and falls back to eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    return torch.compile(run_model, fullgraph=True, dynamic=False)


def inductor_cache_dir() -> Path:
    """Where inductor keeps compiled kernels and FX graphs between processes: $TORCHINDUCTOR_CACHE_DIR
    when set (inductor's own variable), else <llmlab cache>/inductor, i.e. ~/.cache/llmlab/inductor
    or $LLMLAB_CACHE/inductor. Inductor's default, /tmp/torchinductor_<user>, is emptied by reboots
    and tmp cleaners, and every cold start then pays the full compile again."""
    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("LLMLAB_CACHE", Path.home() / ".cache" / "llmlab")) / "inductor"


def use_stable_inductor_cache() -> Path:
    """Point inductor at `inductor_cache_dir()` (it reads the variable at each cache access, so
    this must run before the first compile) and return the directory."""
    path = inductor_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LLMLabError(f"cannot create the compile cache directory {path} ({e.strerror}): set "
                          "TORCHINDUCTOR_CACHE_DIR to a writable directory, or run without --compile") from e
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


def warm_up(model: nn.Module, decode_fn: Callable[..., torch.Tensor], batch_size: int = 1,
            slots: int = 256) -> float:
    """Compile the decode graph for `batch_size` sequences and a static cache of `slots` slots
    (256, 512, ...; see `generate.cache_length`) by generating two tokens from a dummy prompt
    through the engine's own loop (`decode_steps`, so whatever cache it builds is what gets
    traced). Returns the seconds spent. The dummy prompt is as short as the cache size allows:
    one token for the first size, else one token past the next smaller size."""
    block = model.config.block_size
    slots = cache_length(min(slots, block), block, static=True)
    smaller = 1 << ((slots - 1).bit_length() - 1)     # the largest power of two below `slots`
    prompt_len = 1 if slots == cache_length(3, block, static=True) else smaller - 1
    config = SamplingConfig(max_new_tokens=2, temperature=0.0, ignore_eos=True)
    t0 = time.perf_counter()
    for _ in decode_steps(model, [[0] * prompt_len] * batch_size, config, decode_fn=decode_fn):
        pass
    return time.perf_counter() - t0


class CompiledDecode:
    """The compiled step as a `decode_fn`, plus the record of which graphs are already compiled.

        step = CompiledDecode(model)                  # prepares the model, nothing compiled yet
        load_s = step.prepare(1, 256)                 # at load: the graph of short single prompts
        timings.compile_s = step.prepare(B, cache_length(L + max_new_tokens, block, static=True))
        decode_steps(model, prompts, config, timings=timings, decode_fn=step)

    `prepare` returns 0.0 for a graph compiled before, so calling it before every generation
    costs nothing and moves the compile of a new cache size (a reply past 256 tokens of context)
    out of the decode timing into `compile_s`."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.fn = compile_decode_step(model)
        self.compiled: set[tuple[int, int]] = set()
        self.compile_s = 0.0                      # total so far, for reports

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.fn(*args, **kwargs)

    def prepare(self, batch_size: int, needed_slots: int) -> float:
        block = self.model.config.block_size
        key = (batch_size, cache_length(min(needed_slots, block), block, static=True))
        if key in self.compiled:
            return 0.0
        seconds = warm_up(self.model, self.fn, *key)
        self.compiled.add(key)
        self.compile_s += seconds
        return seconds
