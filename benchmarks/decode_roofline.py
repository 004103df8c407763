"""Decode speed against the memory-bandwidth bound: the roofline of docs/03-inference.md.

    python benchmarks/decode_roofline.py              # 1-2 minutes on 2 cores; writes docs/img/03-decode-roofline.png
    python benchmarks/decode_roofline.py --compile    # adds the compiled decode step (a minute or more of compiling when cold)

The Q4_1 point runs chapter 7's C++ int4 kernel, which the first run on a machine builds once
(~40-90 s, cached afterwards).

A decode step reads every weight once (and the KV cache so far) to produce one token, for about
2 FLOPs per weight: at batch 1 that is far too little arithmetic per byte to keep the cores busy,
so a step can take no less than bytes_per_token / memory_bandwidth. The bound on tokens/s is
therefore a line, bandwidth / bytes_per_token, and each model x dtype is one point below it.

1. Bandwidth: the best of several passes over a 256 MiB float32 tensor, read only (`sum`, or a
   matrix-vector product with long rows: what a decode step does with its weights) and copied
   (`copy_`, read + write, both counted).
2. Decode tokens/s with llmlab's Engine, greedy, EOS ignored, a short prompt (so the KV cache is a
   small share of the bytes), on SmolLM2-135M in float32 and bfloat16, run on its GGUF's own Q4_1
   blocks (`--native-gguf`, 4.5-5 bits per weight), and on copies of it cut to fewer layers or
   stacked to more (the weights' values do not change the time, only their bytes do).
3. Bytes per token: every weight tensor once (the tied embedding/head matrix once: the head reads
   all of it, the embedding one row), plus the KV cache slots attention reads, averaged over the steps.

The machine is usually shared: tokens/s move with other jobs, the shape of the plot (points under
the line, eager float32 at a fraction of it) much less. The header line says what ran it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from _machine import describe

from llmlab.infer import Engine, SamplingConfig
from llmlab.model.transformer import Transformer

IMG = Path(__file__).resolve().parents[1] / "docs" / "img" / "03-decode-roofline.png"
PROMPT = "The theatre companies of the sixteenth century travelled between towns with their costumes"


def bandwidth_gbs(mib: int = 256, repeats: int = 5) -> tuple[float, float]:
    """(read GB/s, copy GB/s): the best pass over a tensor far larger than any cache. Read is the
    faster of two read-only streams, `sum` and a matrix-vector product with 4,096-wide rows (the
    decode step's own operation, with rows long enough that the loop overhead is small)."""
    src = torch.rand(mib * 2**20 // 4)
    dst, wide, x = torch.empty_like(src), src.view(-1, 4096), torch.rand(4096)
    nbytes = src.numel() * 4

    def best(run, moved: int) -> float:
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            rates.append(moved / (time.perf_counter() - t0) / 1e9)
        return max(rates)

    read = max(best(src.sum, nbytes), best(lambda: torch.mv(wide, x), nbytes))
    return read, best(lambda: dst.copy_(src), 2 * nbytes)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every weight (float parameters and quantized layers' buffers), each storage once."""
    seen, total = set(), 0
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, t in tensors:
        if name.endswith(("rope_cos", "rope_sin", "dtype_probe")) or t.data_ptr() in seen:
            continue  # rotary tables: one row read per step, not the whole table
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def kv_bytes_per_step(model: Transformer, prompt_len: int, new: int) -> float:
    """Cache bytes attention reads per decode step (keys and values of every layer), averaged."""
    c = model.config
    per_position = 2 * c.n_layer * c.n_kv_head * c.head_dim * next(model.parameters()).element_size()
    return per_position * (prompt_len + new / 2)


def resized(model: Transformer, n_layer: int) -> Transformer:
    """SmolLM2 with n_layer blocks: block i is a copy of block i mod 30 (own memory, never shared)."""
    config = model.config.replace(n_layer=n_layer)
    state = {}
    for name, t in model.state_dict().items():
        if name.startswith("blocks."):
            _, i, rest = name.split(".", 2)
            if int(i) == 0:
                for j in range(n_layer):
                    state[f"blocks.{j}.{rest}"] = model.state_dict()[f"blocks.{j % model.config.n_layer}.{rest}"].clone()
        elif name != "lm_head.weight" or not config.tie_embeddings:
            state[name] = t.clone()
    return Transformer.from_state_dict(config, state).eval()


def decode_rate(engine: Engine, prompt: list[int], new: int, rounds: int) -> float:
    config = SamplingConfig(max_new_tokens=new, temperature=0, ignore_eos=True)
    engine.generate(prompt, SamplingConfig(max_new_tokens=4, temperature=0, ignore_eos=True))  # warm-up
    return statistics.median(engine.generate(prompt, config).timings["decode_tok_s"] for _ in range(rounds))


def plot(rows: list[dict], read_gbs: float, copy_gbs: float, header: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.2))
    xs = [r["bytes"] / 1e6 for r in rows]
    grid = torch.logspace(torch.log10(torch.tensor(min(xs) / 1.6)), torch.log10(torch.tensor(max(xs) * 1.6)), 50)
    ax.plot(grid, read_gbs * 1e3 / grid, "k-", label=f"bound: read bandwidth {read_gbs:.0f} GB/s / bytes per token")
    ax.plot(grid, copy_gbs * 1e3 / grid, "k--", lw=0.8,
            label=f"bound: copy bandwidth {copy_gbs:.0f} GB/s (read + write) / bytes per token")
    styles = {"float32": ("o", "tab:blue"), "bfloat16": ("s", "tab:orange"), "Q4_1": ("D", "tab:green")}
    done = set()
    for r in rows:
        marker, colour = styles[r["dtype"]]
        filled = not r["compiled"]
        label = f"{r['dtype']}{' + compile' if r['compiled'] else ''}"
        ax.plot(r["bytes"] / 1e6, r["tok_s"], marker, color=colour, ms=8, mfc=colour if filled else "white",
                mew=1.8, ls="none", label=None if label in done else f"measured: {label}")
        done.add(label)
        rate = f"{r['tok_s']:.1f}" if r["tok_s"] < 10 else f"{r['tok_s']:.0f}"
        ax.annotate(f"{r['name']} {rate}/s ({100 * r['fraction']:.0f}%)", (r["bytes"] / 1e6, r["tok_s"]),
                    textcoords="offset points", xytext=(7, -3 if filled else 6), fontsize=7.5)
    ax.set(xscale="log", yscale="log", xlabel="bytes read per decoded token (MB, log)",
           ylabel="decode tokens/s at batch 1 (log)",
           title="Decode is memory-bound: tokens/s <= bandwidth / bytes per token")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7.5, loc="upper right")
    fig.text(0.01, 0.005, header, fontsize=6.5, color="0.35")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new", type=int, default=32, help="greedy tokens per measured generation")
    p.add_argument("--rounds", type=int, default=2, help="measured generations per point (median)")
    p.add_argument("--layers", type=int, nargs="+", default=[10, 30, 60],
                   help="SmolLM2 cut or stacked to these block counts (30 is the real model)")
    p.add_argument("--compile", action="store_true", help="also the compiled decode step (float32 and bfloat16, 30 layers)")
    p.add_argument("--out", type=Path, default=IMG)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    header = describe(args.threads)
    t_start = time.perf_counter()
    read_gbs, copy_gbs = bandwidth_gbs()
    print(f"bandwidth: read {read_gbs:.1f} GB/s, copy {copy_gbs:.1f} GB/s", file=sys.stderr)

    base = Engine.load("smollm2", device="cpu", dtype="float32")
    prompt = base.tokenizer.encode(PROMPT)
    rows = []

    def measure(name: str, model: Transformer, dtype: str, compiled: bool = False) -> None:
        engine = Engine(model, base.tokenizer, torch.device("cpu"), name, compile=compiled)
        rate = decode_rate(engine, prompt, args.new, args.rounds)
        nbytes = weight_bytes(model) + kv_bytes_per_step(model, len(prompt), args.new)
        bound = read_gbs * 1e9 / nbytes
        rows.append(dict(name=name, dtype=dtype, compiled=compiled, bytes=nbytes, tok_s=rate,
                         bound=bound, fraction=rate / bound, gbs=rate * nbytes / 1e9))
        print(f"{name} {dtype}{' compiled' if compiled else ''}: {nbytes / 1e6:.0f} MB/token, {rate:.1f} tok/s "
              f"({100 * rate / bound:.0f}% of {bound:.0f})", file=sys.stderr)

    for dtype in ("float32", "bfloat16"):
        for n_layer in args.layers:
            model = base.model if n_layer == base.model.config.n_layer else resized(base.model, n_layer)
            measure(f"{n_layer}L", model.to(getattr(torch, dtype)), dtype)
            if model is not base.model:
                del model
        if args.compile:
            measure(f"{base.model.config.n_layer}L", base.model.to(getattr(torch, dtype)), dtype, compiled=True)
    native = Engine.load("smollm2", device="cpu", native_gguf=True)
    measure(f"{native.model.config.n_layer}L", native.model, "Q4_1")

    print(f"\n## Decode roofline, SmolLM2-135M variants, {args.new} greedy tokens after a {len(prompt)}-token prompt, "
          f"median of {args.rounds}\n\n{header}; bandwidth read {read_gbs:.1f} GB/s, copy {copy_gbs:.1f} GB/s\n")
    print("| model | dtype | MB read per token | decode tok/s | bound tok/s (read bandwidth) | share of bound | "
          "effective GB/s |\n|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| SmolLM2 {r['name']} | {r['dtype']}{' + compile' if r['compiled'] else ''} | {r['bytes'] / 1e6:.0f} | "
              f"{r['tok_s']:.1f} | {r['bound']:.0f} | {100 * r['fraction']:.0f}% | {r['gbs']:.1f} |")
    plot(rows, read_gbs, copy_gbs, header, args.out)
    print(f"\nwrote {args.out} ({time.perf_counter() - t_start:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
