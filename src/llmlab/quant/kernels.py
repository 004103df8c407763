"""Fused dequantize-and-multiply CPU kernels for a few rows (decode), compiled on first use.

Decode multiplies one row x by every weight matrix, so its speed is how fast the weights stream
from memory. A quantized layer should therefore read its 4- or 8-bit codes once and turn them into
float products in registers, never writing a float copy of W. Two ways to get that loop:

  1. torch.compile of the PyTorch expression (`QuantizedLinear.matvec`): readable, but on the AVX2
     machine of docs/07 inductor loads int8/uint8 codes through an 8-byte partial load per vector
     (a memcpy into a stack buffer), measured 3x *slower* than its own float32 loop for 1536 x 576:
     fewer bytes, more time (benchmarks/quantize.py --kernels).
  2. This file: the same loop in C++ with AVX2 intrinsics (a portable loop elsewhere), split over
     output rows with ATen's thread pool: 8 codes widened to int32, converted, fused multiply-add
     into 8 lanes per group, the group's scale applied to the lanes, one horizontal sum per row.
     It is registered as the operators `llmlab::int4_matvec` / `llmlab::int8_matvec`, so
     compiled decode graphs call it as one op.

  Optional, `int8_activations=True` on a layer (`use_int8_activations(model)`): llama.cpp's trick.
  x is rounded to int8 per block of 32 inputs, and 32 code x activation products are one
  `maddubs` instruction in integers, about 2x faster again. It is not the default, because it is
  not free: on SmolLM2 it alone moves decode logits by a mean KL divergence of ~0.016 nats from the
  exact path (94.8% top-1 agreement over 96 WikiText tokens), as large as int4's own error.

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


def use_int8_activations(model: torch.nn.Module, on: bool = True) -> int:
    """Switch every quantized layer of `model` to (or back from) int8-rounded activations in the
    fused kernel; returns how many layers changed."""
    from llmlab.quant.linear import QuantizedLinear
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    for layer in layers:
        layer.int8_activations = on
    return len(layers)

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <vector>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LLMLAB_AVX2 1
#endif

// x (M, in) float -> int8 codes per block of 32 (dx = max|x| / 127), as llama.cpp's Q8 activations.
// interleave: store each block's even inputs, then its odd ones, to line up with 4-bit bytes
// whose low nibble is element 2j and high nibble element 2j + 1.
static void quantize_rows(const float* x, int64_t M, int64_t in, bool interleave,
                          std::vector<int8_t>& q, std::vector<float>& d) {
  q.resize(M * in);
  d.resize(M * in / 32);
  for (int64_t b = 0; b < M * in / 32; ++b) {
    const float* v = x + b * 32;
    float amax = 0.f;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(v[i]));
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    d[b] = amax / 127.f;
    int8_t* out = q.data() + b * 32;
    for (int i = 0; i < 32; ++i)
      out[interleave ? (i % 2) * 16 + i / 2 : i] = static_cast<int8_t>(std::nearbyint(v[i] * inv));
  }
}

#ifdef LLMLAB_AVX2
static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
// 32 unsigned 4-bit (or |int8|) codes times 32 int8 activations, summed in 8 int32 lanes, as floats.
static inline __m256 dot32(__m256i u8, __m256i s8) {
  const __m256i p16 = _mm256_maddubs_epi16(u8, s8);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}
// 16 bytes of 4-bit codes times 32 float activations (even inputs e, odd inputs o), in 8 lanes.
static inline __m256 dot32_float4(const uint8_t* b, const float* e, const float* o, __m256 acc) {
  const __m256i low4 = _mm256_set1_epi32(15);
  for (int j = 0; j < 16; j += 8) {
    const __m256i w = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + j)));
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(e + j), _mm256_cvtepi32_ps(_mm256_and_si256(w, low4)), acc);
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(o + j), _mm256_cvtepi32_ps(_mm256_srli_epi32(w, 4)), acc);
  }
  return acc;
}
#endif

// y (M, out) = x (M, in) W^T, W[o, i] = code(o, i) * scale[o, g] + min[o, g] for the group g of i;
// codes packed two per byte, element 2j in the low nibble of byte j. int8_act: round x to int8
// per 32 inputs first and multiply in integers (faster; llama.cpp's way; adds error, docs/07).
torch::Tensor int4_matvec(torch::Tensor x, torch::Tensor packed, torch::Tensor scales, torch::Tensor mins,
                          bool int8_act) {
  const int64_t M = x.size(0), in = x.size(1), out = packed.size(0), G = scales.size(1), group = in / G;
  auto y = torch::empty({M, out}, x.options());
  const float* px = x.data_ptr<float>();
  const uint8_t* pw = packed.data_ptr<uint8_t>();
  const at::Half *sc = scales.data_ptr<at::Half>(), *mn = mins.data_ptr<at::Half>();
  float* py = y.data_ptr<float>();
  std::vector<float> xsum(M * G, 0.f), xe(M * in / 2), xo(M * in / 2);   // min term; even/odd inputs
  for (int64_t m = 0; m < M; ++m)
    for (int64_t i = 0; i < in; ++i) {
      xsum[m * G + i / group] += px[m * in + i];
      (i % 2 ? xo : xe)[(m * in + i) / 2] = px[m * in + i];
    }
#ifdef LLMLAB_AVX2
  if (group % 32 == 0) {
    std::vector<int8_t> xq;
    std::vector<float> dx;
    if (int8_act) quantize_rows(px, M, in, true, xq, dx);
    const int64_t per_group = group / 32;
    at::parallel_for(0, out, 16, [&](int64_t begin, int64_t end) {
      const __m128i low4 = _mm_set1_epi8(15);
      for (int64_t o = begin; o < end; ++o) {
        const uint8_t* row = pw + o * in / 2;
        for (int64_t m = 0; m < M; ++m) {
          __m256 acc = _mm256_setzero_ps();
          float total = 0.f;
          for (int64_t g = 0; g < G; ++g) {
            const float s = float(sc[o * G + g]);
            total += float(mn[o * G + g]) * xsum[m * G + g];
            __m256 dot = _mm256_setzero_ps();       // the group's dot product, 8 partial sums
            for (int64_t k = g * per_group; k < (g + 1) * per_group; ++k) {
              if (int8_act) {
                const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k * 16));
                const __m256i codes = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), low4), _mm_and_si128(b, low4));
                const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq.data() + m * in + k * 32));
                dot = _mm256_fmadd_ps(dot32(codes, a), _mm256_set1_ps(dx[m * in / 32 + k]), dot);
              } else {
                dot = dot32_float4(row + k * 16, xe.data() + (m * in + k * 32) / 2, xo.data() + (m * in + k * 32) / 2, dot);
              }
            }
            acc = _mm256_fmadd_ps(dot, _mm256_set1_ps(s), acc);
          }
          py[m * out + o] = total + hsum(acc);
        }
      }
    });
    return y;
  }
#endif
  at::parallel_for(0, out, 16, [&](int64_t begin, int64_t end) {      // portable float path
    for (int64_t o = begin; o < end; ++o)
      for (int64_t m = 0; m < M; ++m) {
        float total = 0.f;
        for (int64_t g = 0; g < G; ++g) {
          float dot = 0.f;
          for (int64_t i = g * group; i < (g + 1) * group; i += 2) {
            const uint8_t b = pw[o * in / 2 + i / 2];
            dot += px[m * in + i] * float(b & 15) + px[m * in + i + 1] * float(b >> 4);
          }
          total += float(sc[o * G + g]) * dot + float(mn[o * G + g]) * xsum[m * G + g];
        }
        py[m * out + o] = total;
      }
  });
  return y;
}

// y (M, out) = x (M, in) W^T with W[o, i] = q[o, i] * scale[o, group of i], q int8.
torch::Tensor int8_matvec(torch::Tensor x, torch::Tensor w, torch::Tensor scales, bool int8_act) {
  const int64_t M = x.size(0), in = x.size(1), out = w.size(0), G = scales.size(1), group = in / G;
  auto y = torch::empty({M, out}, x.options());
  const float* px = x.data_ptr<float>();
  const int8_t* pw = w.data_ptr<int8_t>();
  const at::Half* sc = scales.data_ptr<at::Half>();
  float* py = y.data_ptr<float>();
#ifdef LLMLAB_AVX2
  if (group % 32 == 0) {
    std::vector<int8_t> xq;
    std::vector<float> dx;
    if (int8_act) quantize_rows(px, M, in, false, xq, dx);
    const int64_t per_group = group / 32;
    at::parallel_for(0, out, 16, [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o)
        for (int64_t m = 0; m < M; ++m) {
          __m256 acc = _mm256_setzero_ps();
          for (int64_t g = 0; g < G; ++g) {
            __m256 dot = _mm256_setzero_ps();
            for (int64_t k = g * per_group; k < (g + 1) * per_group; ++k) {
              const int8_t* wk = pw + o * in + k * 32;
              if (int8_act) {
                // maddubs multiplies unsigned by signed: |w| times x carrying w's sign (llama.cpp's trick)
                const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wk));
                const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq.data() + m * in + k * 32));
                dot = _mm256_fmadd_ps(dot32(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(a, wv)),
                                      _mm256_set1_ps(dx[m * in / 32 + k]), dot);
              } else {
                for (int j = 0; j < 32; j += 8) {
                  const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(wk + j)));
                  dot = _mm256_fmadd_ps(_mm256_loadu_ps(px + m * in + k * 32 + j), _mm256_cvtepi32_ps(q), dot);
                }
              }
            }
            acc = _mm256_fmadd_ps(dot, _mm256_set1_ps(float(sc[o * G + g])), acc);
          }
          py[m * out + o] = hsum(acc);
        }
    });
    return y;
  }
#endif
  at::parallel_for(0, out, 16, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o)
      for (int64_t m = 0; m < M; ++m) {
        float total = 0.f;
        for (int64_t g = 0; g < G; ++g) {
          float dot = 0.f;
          for (int64_t i = g * group; i < (g + 1) * group; ++i) dot += px[m * in + i] * float(pw[o * in + i]);
          total += float(sc[o * G + g]) * dot;
        }
        py[m * out + o] = total;
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
def int4_matvec(x: Tensor, packed: Tensor, scales: Tensor, mins: Tensor, int8_act: bool = False) -> Tensor:
    """x (M, in) float32, M <= MAX_ROWS -> (M, out) float32, for `Int4Linear`'s layout."""
    return _state["module"].int4_matvec(x.contiguous(), packed, scales, mins, int8_act)


@int4_matvec.register_fake
def _(x, packed, scales, mins, int8_act=False):
    return x.new_empty(x.size(0), packed.size(0))


@torch.library.custom_op("llmlab::int8_matvec", mutates_args=())
def int8_matvec(x: Tensor, q: Tensor, scales: Tensor, int8_act: bool = False) -> Tensor:
    """x (M, in) float32, M <= MAX_ROWS -> (M, out) float32, for `Int8Linear`'s layout."""
    return _state["module"].int8_matvec(x.contiguous(), q, scales, int8_act)


@int8_matvec.register_fake
def _(x, q, scales, int8_act=False):
    return x.new_empty(x.size(0), q.size(0))
