"""Batch-1 matrix-vector products: the library GEMM vs the compiled reduction form, per SmolLM2 shape.

    python benchmarks/matvec.py                 # 1 thread
    python benchmarks/matvec.py --threads 2

Decode is a chain of y = W x products (docs/03-inference.md). For each weight shape of SmolLM2-135M
this times `F.linear(x, W)` (oneDNN/MKL), `x @ W.T` with W stored transposed (column-major), and
`torch.compile` of the reduction form `(x * W).sum(-1)` (what llmlab.infer.compiled_decode uses).
Every call reads a different copy of W from a pool of >= 200 MB, so the weights come from DRAM as
they do in a real decode step, not from cache. Prints ms per call and the bandwidth reached.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from _machine import describe

from llmlab.infer.compiled_decode import reduction_matvec

SHAPES = {"wq / wo": (576, 576), "wk / wv": (192, 576), "w_gate / w_up": (1536, 576), "w_down": (576, 1536),
          "lm_head": (49152, 576)}


def median_ms(fn, repeats: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = 64  # one graph per shape and dtype
    compiled = torch.compile(reduction_matvec, dynamic=False)
    print(f"\n{describe(args.threads)}")
    print("\n| weight | dtype | F.linear ms (GB/s) | x @ Wt, W column-major ms (GB/s) | compiled reduction ms (GB/s) "
          "| reduction vs F.linear |\n|---|---|---:|---:|---:|---:|")
    for dtype in (torch.float32, torch.bfloat16):
        for name, (out_f, in_f) in SHAPES.items():
            copies = max(1, int(200e6 / (out_f * in_f * dtype.itemsize)))
            weights = [torch.randn(out_f, in_f, dtype=dtype) for _ in range(copies)]
            transposed = [w.t().contiguous() for w in weights]
            x = torch.randn(1, in_f, dtype=dtype)
            turn = iter(range(10**9))
            forms = {"linear": lambda: F.linear(x, weights[next(turn) % copies]),
                     "colmajor": lambda: x @ transposed[next(turn) % copies],
                     "reduction": lambda: compiled(x, weights[next(turn) % copies])}
            ms = {k: median_ms(f, args.repeats) for k, f in forms.items()}
            mb = out_f * in_f * dtype.itemsize / 1e6
            cells = [f"{ms[k]:.3f} ({mb / ms[k]:.1f})" for k in forms]
            print(f"| {name} {out_f}x{in_f} | {str(dtype)[6:]} | " + " | ".join(cells)
                  + f" | {ms['linear'] / ms['reduction']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
