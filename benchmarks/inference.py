"""Inference speed on SmolLM2-135M: llmlab's engine vs Hugging Face transformers (and llama.cpp).

    python benchmarks/inference.py                 # 1 round of every configuration (compiles cold)
    python benchmarks/inference.py --rounds 3      # medians; rounds 2+ find the compile cache warm

Same ~512-token prompt, greedy, 128 new tokens (EOS ignored), same thread count. Each configuration
runs in its own process, so that load time and peak RSS are its own, and the rounds interleave
them (ABAB). llama.cpp runs through `llama-cpp-python` on the original Q4_1 file when installed.

transformers runs eagerly and on its documented fast path, a static cache with `torch.compile` of
its forward ("LLM inference optimization" guide: `generation_config.cache_implementation =
"static"`, `model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)`).
Its prefill is timed as `generate(max_new_tokens=1, logits_to_keep=1)`: one forward pass that,
like ours, computes the output head for the last position only.

Compile time is its own column, never part of decode speed: llmlab's `CompiledDecode.prepare`
(what the engine runs at load), and for transformers its first generate minus a later one. Each
compiled configuration gets its own inductor cache directory for the whole run, empty at the
start: round 1 pays the cold compile, later rounds (new processes, same directory) the warm one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from _machine import describe

PROMPT_WORDS = ("In the beginning of the modern theatre, companies of players travelled between towns, "
                "performing in inn yards and great halls. ")


def prompt_text() -> str:
    return PROMPT_WORDS * 24  # ~512 tokens with SmolLM2's tokenizer (checked and trimmed below)


def run_llmlab(dtype: str, compile_: bool, new: int) -> dict:
    from llmlab.infer import Engine, SamplingConfig
    t0 = time.perf_counter()
    engine = Engine.load("smollm2", device="cpu", dtype=dtype)
    load_s = time.perf_counter() - t0
    ids = engine.tokenizer.encode(prompt_text())[:512]
    config = SamplingConfig(max_new_tokens=new, temperature=0, ignore_eos=True)
    compile_s = 0.0
    if compile_:
        from llmlab.infer.compiled_decode import CompiledDecode
        step = CompiledDecode(engine.model)
        compile_s = step.prepare(1, len(ids) + new)   # the graph of this cache size, before the reply
        engine.decode_fn = step
    out = engine.generate(ids, config)
    return {"load_s": load_s, "compile_s": compile_s, **{k: out.timings[k] for k in ("prefill_tok_s", "decode_tok_s")},
            "first_tokens": out.token_ids[:8]}


def run_transformers(dtype: str, compile_: bool, new: int) -> dict:
    import torch
    import transformers

    from llmlab.core.assets import smollm2_gguf
    from llmlab.tokenizer import load_tokenizer
    path = smollm2_gguf()
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=getattr(torch, dtype)).eval()
    load_s = time.perf_counter() - t0
    if compile_:  # its documented fast path
        model.generation_config.cache_implementation = "static"
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
    ids = torch.tensor([load_tokenizer("smollm2").encode(prompt_text())[:512]])

    def generate(n: int) -> tuple[float, torch.Tensor]:
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, logits_to_keep=1)
        return time.perf_counter() - t, out

    with torch.no_grad():
        first, _ = generate(new)                 # compiles prefill and decode graphs when compiled
        prefill_s = min(generate(1)[0] for _ in range(2))
        total, out = generate(new)
    # generate(new) = one prefill + (new - 1) decode steps; subtract the prefill measured alone.
    return {"load_s": load_s, "compile_s": max(first - total, 0.0) if compile_ else 0.0,
            "prefill_tok_s": ids.size(1) / prefill_s, "decode_tok_s": (new - 1) / max(total - prefill_s, 1e-9),
            "first_tokens": out[0, 512:520].tolist()}


def run_llama_cpp(threads: int, new: int) -> dict:
    from llama_cpp import Llama

    from llmlab.core.assets import smollm2_gguf  # imports no torch: peak RSS stays llama.cpp's own
    t0 = time.perf_counter()
    llm = Llama(str(smollm2_gguf()), n_ctx=1024, n_threads=threads, verbose=False)
    load_s = time.perf_counter() - t0
    ids = llm.tokenize(prompt_text().encode(), add_bos=False)[:512]  # same ids as our tokenizer (checked)
    t0 = time.perf_counter()
    llm.eval(ids)
    prefill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tokens = []
    for _ in range(new):
        token = llm.sample(temp=0.0)
        tokens.append(token)
        llm.eval([token])
    return {"load_s": load_s, "compile_s": 0.0, "prefill_tok_s": len(ids) / prefill_s,
            "decode_tok_s": new / (time.perf_counter() - t0), "first_tokens": tokens[:8]}


CONFIGS = {
    "llmlab float32": lambda a: run_llmlab("float32", False, a.new),
    "llmlab bfloat16": lambda a: run_llmlab("bfloat16", False, a.new),
    "llmlab float32 + compile": lambda a: run_llmlab("float32", True, a.new),
    "llmlab bfloat16 + compile": lambda a: run_llmlab("bfloat16", True, a.new),
    "transformers float32": lambda a: run_transformers("float32", False, a.new),
    "transformers bfloat16": lambda a: run_transformers("bfloat16", False, a.new),
    "transformers float32 + static cache + compile": lambda a: run_transformers("float32", True, a.new),
    "transformers bfloat16 + static cache + compile": lambda a: run_transformers("bfloat16", True, a.new),
    "llama.cpp Q4_1": lambda a: run_llama_cpp(a.threads, a.new),
}


def child(args) -> int:
    if not args.child.startswith("llama.cpp"):  # llama.cpp gets n_threads; torch would add ~300 MB RSS
        import torch
        torch.set_num_threads(args.threads)
    result = CONFIGS[args.child](args)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))
    return 0


def strongest_transformers(results: dict[str, list[dict]], dtype: str) -> tuple[str, float] | None:
    """The fastest-decoding transformers configuration of this dtype: the peer every ratio is against."""
    rows = [(statistics.median(r["decode_tok_s"] for r in rs), n) for n, rs in results.items()
            if n.startswith("transformers") and dtype in n and rs]
    return (max(rows)[1], max(rows)[0]) if rows else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new", type=int, default=128, help="new tokens per run")
    p.add_argument("--only", nargs="+", choices=list(CONFIGS), help="run only these configurations")
    p.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    names = args.only or list(CONFIGS)
    results: dict[str, list[dict]] = {n: [] for n in names}
    caches = tempfile.TemporaryDirectory(prefix="llmlab-bench-inductor-")
    for r in range(args.rounds):
        for name in names:  # interleaved: each round runs every configuration once
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": os.path.join(caches.name, name.replace(" ", "_"))}
            proc = subprocess.run([sys.executable, __file__, "--child", name, "--threads", str(args.threads),
                                   "--new", str(args.new)], capture_output=True, text=True, env=env)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                reason = (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]
                print(f"round {r + 1}: {name}: skipped ({reason})", file=sys.stderr)
                continue
            results[name].append(json.loads(line[7:]))
            print(f"round {r + 1}: {name}: {results[name][-1]}", file=sys.stderr)
    caches.cleanup()

    def median(name: str, key: str, rows: slice = slice(None)) -> float | None:
        picked = results.get(name, [])[rows]
        return statistics.median(x.get(key, 0.0) for x in picked) if picked else None

    print(f"\n## SmolLM2-135M, 512-token prompt, {args.new} new tokens (greedy), median of {args.rounds} round(s)")
    print(f"\n{describe(args.threads)}\n")
    print("| engine | load s | compile s cold / warm | prefill tok/s | decode tok/s "
          "| decode vs strongest transformers (same dtype) | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        if not results[name]:
            print(f"| {name} | not run | | | | | |")
            continue
        m = {k: median(name, k) for k in ("load_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mib")}
        cold, warm = results[name][0]["compile_s"], median(name, "compile_s", slice(1, None))
        compile_cell = "-" if not cold else f"{cold:.0f} / {warm:.1f}" if warm is not None else f"{cold:.0f} / (1 round)"
        peer = strongest_transformers(results, "bfloat16" if "bfloat16" in name else "float32")
        ratio = f"{m['decode_tok_s'] / peer[1]:.2f}x" if peer and not name.startswith("llama") else "-"
        print(f"| {name} | {m['load_s']:.1f} | {compile_cell} | {m['prefill_tok_s']:.0f} | "
              f"{m['decode_tok_s']:.1f} | {ratio} | {m['peak_rss_mib']:.0f} |")
    for dtype in ("float32", "bfloat16"):
        peer = strongest_transformers(results, dtype)
        if peer:
            print(f"\n{dtype}: ratios are against `{peer[0]}` ({peer[1]:.1f} tok/s), the fastest transformers row")
    return 0


if __name__ == "__main__":
    sys.exit(main())
