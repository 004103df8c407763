"""Inference speed on SmolLM2-135M: llmlab's engine vs Hugging Face transformers (and llama.cpp).

    python benchmarks/inference.py                 # 1 round of every configuration
    python benchmarks/inference.py --rounds 5      # medians of 5 interleaved rounds

Same ~512-token prompt, greedy, 128 new tokens (EOS ignored), same thread count. Each configuration
runs in its own process so that load time and peak RSS are its own. llama.cpp runs through
`llama-cpp-python` on the original Q4_1 file when that package is installed.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

PROMPT_WORDS = ("In the beginning of the modern theatre, companies of players travelled between towns, "
                "performing in inn yards and great halls. ")


def prompt_text() -> str:
    return PROMPT_WORDS * 24  # ~512 tokens with SmolLM2's tokenizer (checked and trimmed below)


def run_llmlab(dtype: str, compile_: bool, new: int) -> dict:
    from llmlab.infer import Engine, SamplingConfig
    t0 = time.perf_counter()
    engine = Engine.load("smollm2", device="cpu", dtype=dtype, compile=compile_)
    load_s = time.perf_counter() - t0
    ids = engine.tokenizer.encode(prompt_text())[:512]
    config = SamplingConfig(max_new_tokens=new, temperature=0, ignore_eos=True)
    compile_s = 0.0
    if compile_:  # the first generation traces and compiles the decode step (same cache size as below)
        t0 = time.perf_counter()
        engine.generate(ids, SamplingConfig(max_new_tokens=new, temperature=0, ignore_eos=True))
        compile_s = time.perf_counter() - t0
    out = engine.generate(ids, config)
    return {"load_s": load_s, "compile_s": compile_s, **{k: out.timings[k] for k in ("prefill_tok_s", "decode_tok_s")},
            "first_tokens": out.token_ids[:8]}


def run_transformers(dtype: str, new: int) -> dict:
    import torch
    import transformers

    from llmlab.core.assets import smollm2_gguf
    from llmlab.tokenizer import load_tokenizer
    path = smollm2_gguf()
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=getattr(torch, dtype)).eval()
    load_s = time.perf_counter() - t0
    ids = torch.tensor([load_tokenizer("smollm2").encode(prompt_text())[:512]])
    with torch.no_grad():
        t0 = time.perf_counter()
        model(ids)
        prefill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        total = time.perf_counter() - t0
    # generate() = one prefill + (new - 1) decode steps; subtract the prefill measured alone.
    return {"load_s": load_s, "prefill_tok_s": ids.size(1) / prefill_s,
            "decode_tok_s": (new - 1) / max(total - prefill_s, 1e-9), "first_tokens": out[0, 512:520].tolist()}


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
    return {"load_s": load_s, "prefill_tok_s": len(ids) / prefill_s, "decode_tok_s": new / (time.perf_counter() - t0),
            "first_tokens": tokens[:8]}


CONFIGS = {
    "llmlab float32": lambda a: run_llmlab("float32", False, a.new),
    "llmlab bfloat16": lambda a: run_llmlab("bfloat16", False, a.new),
    "llmlab float32 + compile": lambda a: run_llmlab("float32", True, a.new),
    "llmlab bfloat16 + compile": lambda a: run_llmlab("bfloat16", True, a.new),
    "transformers float32": lambda a: run_transformers("float32", a.new),
    "transformers bfloat16": lambda a: run_transformers("bfloat16", a.new),
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
    for r in range(args.rounds):
        for name in names:  # interleaved: each round runs every configuration once
            proc = subprocess.run([sys.executable, __file__, "--child", name, "--threads", str(args.threads),
                                   "--new", str(args.new)], capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                reason = (proc.stderr.strip().splitlines() or ["no output"])[-1][:120]
                print(f"round {r + 1}: {name}: skipped ({reason})", file=sys.stderr)
                continue
            results[name].append(json.loads(line[7:]))
            print(f"round {r + 1}: {name}: {results[name][-1]}", file=sys.stderr)
    def median(name: str, key: str) -> float | None:
        rows = results.get(name)
        return statistics.median(x.get(key, 0.0) for x in rows) if rows else None

    print(f"\n## SmolLM2-135M, 512-token prompt, {args.new} new tokens (greedy), {args.threads} threads, "
          f"median of {args.rounds} round(s)\n")
    print("| engine | load s | compile s | prefill tok/s | decode tok/s | decode vs transformers (same dtype) "
          "| peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        if not results[name]:
            print(f"| {name} | not run | | | | | |")
            continue
        m = {k: median(name, k) for k in ("load_s", "compile_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mib")}
        base = median("transformers bfloat16" if "bfloat16" in name else "transformers float32", "decode_tok_s")
        ratio = f"{m['decode_tok_s'] / base:.2f}x" if base else "-"
        print(f"| {name} | {m['load_s']:.1f} | {m['compile_s']:.0f} | {m['prefill_tok_s']:.0f} | "
              f"{m['decode_tok_s']:.1f} | {ratio} | {m['peak_rss_mib']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
