"""Fused dequantize-and-multiply CPU kernels for a few rows (decode), compiled on first use.

Decode multiplies one row x by every weight matrix, so its speed is how fast the weights stream
from memory. A quantized layer should therefore read its 4- or 8-bit codes once and turn them into
float products in registers, never writing a float copy of W. Two ways to get that loop:

  1. torch.compile of the PyTorch expression (`QuantizedLinear.matvec`): readable, but on the AVX2
     machine of docs/07 inductor loads int8/uint8 codes through an 8-byte partial load per vector
     (a memcpy into a stack buffer), measured 3x *slower* than its own float32 loop for 1536 x 576:
     fewer bytes, more time (benchmarks/quantize.py --kernels).
  2. This file: the same loop in ~30 lines of C++, which gcc vectorizes (-O3 -march=native), split
     over output rows with ATen's thread pool. It is registered as the operators
     `llmlab::int4_matvec` / `llmlab::int8_matvec`, so compiled decode graphs call it as one op.

Rows: up to MAX_ROWS at once (speculative decoding verifies ~6 tokens per pass): each weight row
stays in L1 while every input row uses it, so k rows cost ~one read of W. More rows are a GEMM's job.

The extension is built with torch.utils.cpp_extension (ninja + a C++ compiler) into
<llmlab cache>/kernels, once per machine (~40 s), and reloaded from there in ~0.1 s. Without a
compiler, or with LLMLAB_NO_KERNELS=1, `available()` is False and layers use the PyTorch path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import Tensor

MAX_ROWS = 8

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LLMLAB_AVX2 1
#endif

// Dot product of one group: sum_j e[j] * lo(b[j]) + d[j] * hi(b[j]) over n bytes (n % 8 == 0 on AVX2).
// On AVX2 the group's 8 partial sums stay in a vector: the caller scales and accumulates them
// without a horizontal sum per group (the per-group reduction is what makes a plain loop slow).
#ifdef LLMLAB_AVX2
static inline __m256 int4_group(const uint8_t* b, const float* e, const float* d, int64_t n) {
  const __m256i low4 = _mm256_set1_epi32(15);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; j += 8) {
    __m256i w = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + j)));
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(e + j), _mm256_cvtepi32_ps(_mm256_and_si256(w, low4)), acc);
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(d + j), _mm256_cvtepi32_ps(_mm256_srli_epi32(w, 4)), acc);
  }
  return acc;
}
static inline __m256 int8_group(const int8_t* w, const float* x, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; j += 8) {
    __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + j)));
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), _mm256_cvtepi32_ps(q), acc);
  }
  return acc;
}
static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#endif

// y (M, out) = x (M, in) W^T with W in 4-bit codes: W[o, 2j] = lo(b[o, j]), W[o, 2j+1] = hi(b[o, j]),
// times the group's scale, plus its minimum. xe/xo: the even/odd inputs; xsum: x summed per group.
torch::Tensor int4_matvec(torch::Tensor xe, torch::Tensor xo, torch::Tensor xsum,
                          torch::Tensor packed, torch::Tensor scales, torch::Tensor mins) {
  const int64_t M = xe.size(0), half_in = xe.size(1), out = packed.size(0), G = scales.size(1);
  const int64_t hg = half_in / G;  // bytes per group
  auto y = torch::empty({M, out}, xe.options());
  const float *pe = xe.data_ptr<float>(), *po = xo.data_ptr<float>(), *ps = xsum.data_ptr<float>();
  const uint8_t* pw = packed.data_ptr<uint8_t>();
  const at::Half *sc = scales.data_ptr<at::Half>(), *mn = mins.data_ptr<at::Half>();
  float* py = y.data_ptr<float>();
  at::parallel_for(0, out, 16, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const uint8_t* row = pw + o * half_in;
      for (int64_t m = 0; m < M; ++m) {
        const float *e = pe + m * half_in, *d = po + m * half_in;
        float total = 0.f;
#ifdef LLMLAB_AVX2
        if (hg % 8 == 0) {
          __m256 acc = _mm256_setzero_ps();
          for (int64_t g = 0; g < G; ++g) {
            __m256 dot = int4_group(row + g * hg, e + g * hg, d + g * hg, hg);
            acc = _mm256_fmadd_ps(dot, _mm256_set1_ps(float(sc[o * G + g])), acc);
            total += float(mn[o * G + g]) * ps[m * G + g];
          }
          py[m * out + o] = total + hsum(acc);
          continue;
        }
#endif
        for (int64_t g = 0; g < G; ++g) {
          const uint8_t* b = row + g * hg;
          float dot = 0.f;
          for (int64_t j = 0; j < hg; ++j)
            dot += e[g * hg + j] * float(b[j] & 15) + d[g * hg + j] * float(b[j] >> 4);
          total += float(sc[o * G + g]) * dot + float(mn[o * G + g]) * ps[m * G + g];
        }
        py[m * out + o] = total;
      }
    }
  });
  return y;
}

// y (M, out) = x (M, in) W^T with W[o, i] = q[o, i] * scale[o, group of i], q int8.
torch::Tensor int8_matvec(torch::Tensor x, torch::Tensor q, torch::Tensor scales) {
  const int64_t M = x.size(0), in = x.size(1), out = q.size(0), G = scales.size(1), group = in / G;
  auto y = torch::empty({M, out}, x.options());
  const float* px = x.data_ptr<float>();
  const int8_t* pq = q.data_ptr<int8_t>();
  const at::Half* sc = scales.data_ptr<at::Half>();
  float* py = y.data_ptr<float>();
  at::parallel_for(0, out, 16, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      for (int64_t m = 0; m < M; ++m) {
        const int8_t* w = pq + o * in;
        const float* xv = px + m * in;
#ifdef LLMLAB_AVX2
        if (group % 8 == 0) {
          __m256 acc = _mm256_setzero_ps();
          for (int64_t g = 0; g < G; ++g)
            acc = _mm256_fmadd_ps(int8_group(w + g * group, xv + g * group, group),
                                  _mm256_set1_ps(float(sc[o * G + g])), acc);
          py[m * out + o] = hsum(acc);
          continue;
        }
#endif
        float total = 0.f;
        for (int64_t g = 0; g < G; ++g) {
          float dot = 0.f;
          for (int64_t j = 0; j < group; ++j) dot += xv[g * group + j] * float(w[g * group + j]);
          total += float(sc[o * G + g]) * dot;
        }
        py[m * out + o] = total;
      }
    }
  });
  return y;
}
"""

_state: dict[str, object] = {}


def kernel_dir() -> Path:
    return Path(os.environ.get("LLMLAB_CACHE", Path.home() / ".cache" / "llmlab")) / "kernels"


def _build():
    from torch.utils.cpp_extension import load_inline

    # ninja from the `ninja` wheel lives next to this interpreter; cpp_extension looks on PATH.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    directory = kernel_dir()
    directory.mkdir(parents=True, exist_ok=True)
    return load_inline("llmlab_quant_kernels", cpp_sources=_SOURCE, functions=["int4_matvec", "int8_matvec"],
                       extra_cflags=["-O3", "-march=native"], build_directory=str(directory),
                       verbose=False)


def available() -> bool:
    """Whether the compiled kernels can be used (built or loaded on the first call)."""
    if "ok" not in _state:
        if os.environ.get("LLMLAB_NO_KERNELS") == "1":
            _state["ok"] = False
        else:
            try:
                _state["module"] = _build()
                _state["ok"] = True
            except Exception as e:  # no compiler, no ninja, a failed build: the PyTorch path still works
                print(f"llmlab: fused quantized kernels unavailable ({type(e).__name__}: {str(e)[:200]}); "
                      "using the PyTorch path (slower decode)", file=sys.stderr)
                _state["ok"] = False
    return bool(_state["ok"])


def ready() -> bool:
    """True once the kernels are loaded (never builds: safe inside a traced graph)."""
    return _state.get("ok") is True


@torch.library.custom_op("llmlab::int4_matvec", mutates_args=())
def int4_matvec(x: Tensor, packed: Tensor, scales: Tensor, mins: Tensor) -> Tensor:
    """x (M, in) float32, M <= MAX_ROWS -> (M, out) float32, for `Int4Linear`'s layout."""
    groups = scales.size(1)
    pairs = x.view(x.size(0), -1, 2)
    return _state["module"].int4_matvec(pairs[..., 0].contiguous(), pairs[..., 1].contiguous(),
                                        x.view(x.size(0), groups, -1).sum(-1).contiguous(),
                                        packed, scales, mins)


@int4_matvec.register_fake
def _(x, packed, scales, mins):
    return x.new_empty(x.size(0), packed.size(0))


@torch.library.custom_op("llmlab::int8_matvec", mutates_args=())
def int8_matvec(x: Tensor, q: Tensor, scales: Tensor) -> Tensor:
    """x (M, in) float32, M <= MAX_ROWS -> (M, out) float32, for `Int8Linear`'s layout."""
    return _state["module"].int8_matvec(x.contiguous(), q, scales)


@int8_matvec.register_fake
def _(x, q, scales):
    return x.new_empty(x.size(0), q.size(0))
