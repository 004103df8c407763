"""Quantization: size, speed and quality of every scheme, on two subjects, in one run.

    python benchmarks/quantize.py                         # both subjects, every row (~30 min on 2 cores)
    python benchmarks/quantize.py --subject smollm2 --rows float32,int4-g64,llama.cpp-q4_1
    python benchmarks/quantize.py --kernels               # only the per-layer matrix-vector table

Subjects (docs/07-quantization.md explains the choice):
  smollm2   SmolLM2-135M-Instruct. Its only offline weights are a GGUF with Q4_1 block matrices (and
            a Q8_0 embedding/head), so "float32" is a dequantized 4-bit model; re-quantizing at group 32 would be lossless and meaningless, so groups are
            64 and 192 (576 = 9 x 64 = 3 x 192). Quality on WikiText-2 valid (first --tokens tokens).
  float     a small Llama trained here in float32 (4 x 384, vocab 2048, 800 steps on the Shakespeare
            plays; trained by this script when missing, ~15 min), where the float reference is
            real. Quality on the held-out last 10% of the plays. Group 128 fits its widths too.

Every row runs in its own process (load time and peak RSS are its own): bits per weight, file size,
load seconds, peak RSS after generating, prefill and decode tokens/s (SmolLM2 only: a 512-token
prompt, 128 greedy tokens), perplexity and its change from float32, mean KL divergence from the
float32 model and top-1 agreement (llama.cpp's `llama-perplexity --kl-divergence` measures), over the
same windows. llama.cpp (llama-cpp-python, when installed) runs the original Q4_1 file and our Q8_0
export; its quality is computed from its logits over the same token ids. GPTQ and AWQ calibrate on
built-in text (pydocs for SmolLM2, the first 90% of the plays, its training split, for the float model),
never on the evaluation text.

Row suffixes: +compile runs the decode step through llmlab.infer.compiled_decode (speed only; the
compile seconds are their own column); +q8act switches the fused kernels to llama.cpp's int8-rounded
activations (speed only: quality rows measure the prefill path, which never rounds activations, so
that row's decode-path error is measured separately in docs/07).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _machine import describe

ROOT = Path(__file__).resolve().parent.parent
LLMLAB = [sys.executable, "-m", "llmlab"]
FLOAT_SUBJECT_TRAIN = ["train", "--preset", "small-llama", "--data", "shakespeare", "--tokenizer", "bpe:2048:gpt4",
                       "--n-layer", "4", "--block-size", "128", "--batch-size", "16", "--mlp-hidden", "1152",
                       "--max-iters", "800", "--eval-every", "200"]

# row -> `llmlab quantize` flags (None: not a quantized directory)
QUANTIZED = {
    "int8": ["--method", "int8"],
    "int4-g64": ["--method", "int4", "--group-size", "64"],
    "int4-g128": ["--method", "int4", "--group-size", "128"],
    "int4-g192": ["--method", "int4", "--group-size", "192"],
    "gptq-g64": ["--method", "gptq", "--bits", "4", "--group-size", "64", "--calib-tokens", "16384"],
    "gptq-g128": ["--method", "gptq", "--bits", "4", "--group-size", "128", "--calib-tokens", "16384"],
    "gptq-g192": ["--method", "gptq", "--bits", "4", "--group-size", "192", "--calib-tokens", "16384"],
    "awq-g64": ["--method", "awq", "--group-size", "64", "--calib-tokens", "16384"],
    "awq-g128": ["--method", "awq", "--group-size", "128", "--calib-tokens", "16384"],
    "nf4": ["--method", "nf4"],
}
ROWS = {
    "smollm2": ["float32", "bf16", "bf16+compile", "int8", "int4-g64", "int4-g64+compile", "int4-g192", "gptq-g64",
                "gptq-g192", "awq-g64", "nf4", "native-q4_1", "native-q4_1+compile", "native-q4_1+q8act",
                "native-q4_1+q8act+compile", "llama.cpp-q4_1", "llama.cpp-q8_0"],
    "float": ["float32", "bf16", "int8", "int4-g64", "int4-g128", "int4-g192", "gptq-g64", "gptq-g128", "gptq-g192",
              "awq-g64", "awq-g128", "nf4"],
}
PROMPT = ("In the beginning of the modern theatre, companies of players travelled between towns, "
          "performing in inn yards and great halls. ") * 24


def rss_mib() -> float:
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss: Linux carries
    ru_maxrss across exec, so a child started by a parent that held a model would report the parent's."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- preparation (parent)

def subject_model(subject: str, work: Path) -> str:
    if subject == "smollm2":
        return "smollm2"
    run = work / "float-subject"
    if not (run / "ckpt.pt").is_file():
        print(f"training the float subject into {run} (~15 min)", file=sys.stderr)
        subprocess.run([*LLMLAB, *FLOAT_SUBJECT_TRAIN, "--out", str(run)], check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    return str(run)


def eval_text(subject: str) -> str:
    from llmlab.data.shakespeare import shakespeare_text
    from llmlab.data.sources import load_text
    if subject == "smollm2":
        return load_text("wikitext-2")[0]
    text = shakespeare_text()
    # The run validates on its last 10% of tokens; starting at 91% of the characters keeps a margin,
    # since the token and character 90% marks differ slightly.
    return text[int(len(text) * 0.91):]


def prepare_artifacts(subject: str, rows: list[str], model: str, work: Path) -> dict[str, dict]:
    """Quantize once per (subject, row); returns {row: {"dir", "quantize_s"}}."""
    out = {}
    calib = "builtin:pydocs"
    if subject == "float":      # the training split only: the last 10% is the evaluation text
        from llmlab.data.shakespeare import shakespeare_text
        text = shakespeare_text()
        calib_file = work / "float-subject-calib.txt"
        calib_file.write_text(text[: int(len(text) * 0.9)], encoding="utf-8")
        calib = f"file:{calib_file}"
    for row in rows:
        flags = QUANTIZED.get(row.split("+")[0])
        if flags is None:
            continue
        directory = work / f"{subject}-{row.split('+')[0]}"
        record = directory / "bench-quantize.json"
        if not record.is_file():
            t0 = time.perf_counter()
            subprocess.run([*LLMLAB, "quantize", "--model", model, *flags, "--calib", calib, "--out", str(directory),
                            "--force"], check=True)
            record.write_text(json.dumps({"quantize_s": time.perf_counter() - t0}))
        out[row] = {"dir": str(directory), **json.loads(record.read_text())}
    if "llama.cpp-q8_0" in rows:
        path = work / "smollm2-q8_0.gguf"
        if not path.is_file():
            subprocess.run([*LLMLAB, "export", "smollm2", "--to", "gguf", str(path), "--gguf-type", "q8_0"], check=True)
        out["llama.cpp-q8_0"] = {"file": str(path)}
    return out


def prepare_reference(subject: str, model: str, work: Path, tokens: int, ctx: int) -> dict:
    """Token ids of the evaluation text and the float32 model's log-probabilities over them."""
    from llmlab.eval.reference import ReferenceLogprobs, ids_sha256, reference_logprobs
    from llmlab.model.source import load_model

    ref_path = work / f"reference-{subject}-{tokens}-{ctx}.npy"
    ids_path = ref_path.with_suffix(".ids.json")
    if ids_path.is_file() and Path(str(ref_path) + ".json").is_file():
        ids = json.loads(ids_path.read_text())
        if ReferenceLogprobs.open(ref_path).ids_sha256 == ids_sha256(ids):
            return {"ids": str(ids_path), "reference": str(ref_path)}
    m, tokenizer, _ = load_model(model)
    ids = tokenizer.encode(eval_text(subject))[: tokens + 1]
    ids_path.write_text(json.dumps(ids))
    reference_logprobs(m.float().eval(), ids, min(ctx, m.config.block_size), path=ref_path, name=model,
                       progress_label="reference")
    return {"ids": str(ids_path), "reference": str(ref_path)}


# ----------------------------------------------------------------------------- one row (child)

def child_llmlab(args) -> dict:
    import torch

    from llmlab.eval.reference import ReferenceLogprobs, compare
    from llmlab.infer import Engine, SamplingConfig
    from llmlab.quant.quantize import storage_report

    torch.set_num_threads(args.threads)
    row = args.row
    base, flags = row.split("+")[0], set(row.split("+")[1:])
    compiled = "compile" in flags
    spec = args.artifact or args.model
    dtype = "bfloat16" if base == "bf16" else "float32"
    t0 = time.perf_counter()
    engine = Engine.load(spec, device="cpu", dtype=dtype, native_gguf=base.startswith("native"))
    load_s = time.perf_counter() - t0
    if "q8act" in flags:            # llama.cpp's int8-rounded activations in the fused kernels
        from llmlab.quant.kernels import use_int8_activations
        use_int8_activations(engine.model)
    result = {"load_s": load_s, **storage_report(engine.model)}
    if args.speed:
        compile_s = 0.0
        ids = engine.tokenizer.encode(PROMPT)[:512]
        if compiled:
            from llmlab.infer.compiled_decode import CompiledDecode
            engine.decode_fn = CompiledDecode(engine.model)
            compile_s = engine.decode_fn.prepare(1, len(ids) + args.new)
        out = engine.generate(ids, SamplingConfig(max_new_tokens=args.new, temperature=0, ignore_eos=True))
        result.update(prefill_tok_s=out.timings["prefill_tok_s"], decode_tok_s=out.timings["decode_tok_s"],
                      compile_s=compile_s, first_tokens=out.token_ids[:8])
    result["peak_rss_mib"] = rss_mib()      # before the quality pass, whose full-vocabulary logits are not inference
    if not compiled and "q8act" not in flags and not args.speed_only:   # (prefill windows never use the few-row kernels)
        ids = json.loads(Path(args.ids).read_text())
        reference = ReferenceLogprobs.open(args.reference)
        result.update(compare(engine.model, ids, reference.ctx, reference.stride, reference))
    return result


def child_llama_cpp(args) -> dict:
    import numpy as np
    from llama_cpp import Llama

    from llmlab.eval.reference import ReferenceLogprobs   # numpy only: no torch in this process's RSS

    path = args.artifact
    t0 = time.perf_counter()
    llm = Llama(path, n_ctx=1024, n_threads=args.threads, verbose=False)   # as served: logits of the last token only
    result = {"load_s": time.perf_counter() - t0, "bytes": os.path.getsize(path)}
    ids = llm.tokenize(PROMPT.encode(), add_bos=False)[:512]
    t0 = time.perf_counter()
    llm.eval(ids)
    prefill_s = time.perf_counter() - t0
    tokens, t0 = [], time.perf_counter()
    for _ in range(args.new):
        token = llm.sample(temp=0.0)
        tokens.append(token)
        llm.eval([token])
    result.update(prefill_tok_s=len(ids) / prefill_s, decode_tok_s=args.new / (time.perf_counter() - t0),
                  first_tokens=tokens[:8], peak_rss_mib=rss_mib())
    if args.speed_only:
        return result
    ids = json.loads(Path(args.ids).read_text())
    reference = ReferenceLogprobs.open(args.reference)
    del llm                                # scoring needs every position's logits: a second instance
    llm = Llama(path, n_ctx=1024, n_threads=args.threads, verbose=False, logits_all=True)
    klds, agree, nll, position = [], 0, 0.0, 0
    while position < len(ids) - 1:                      # stride == ctx windows, as the reference used
        window = ids[position:position + reference.ctx + 1]
        llm.reset()
        llm.eval(window[:-1])
        logits = np.asarray(llm.scores[:len(window) - 1], dtype=np.float64)
        lp = logits - logits.max(-1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
        ref = np.asarray(reference.logprobs[position:position + len(lp)], dtype=np.float64)
        ref -= np.log(np.exp(ref).sum(-1, keepdims=True))
        klds.append((np.exp(ref) * (ref - lp)).sum(-1))
        agree += int((lp.argmax(-1) == reference.top1[position:position + len(lp)]).sum())
        nll -= float(lp[np.arange(len(lp)), window[1:]].sum())
        position += len(lp)
    kld = np.concatenate(klds)
    ppl, ref_ppl = float(np.exp(nll / len(kld))), float(np.exp(reference.nll / len(kld)))
    result.update(perplexity=ppl, reference_perplexity=ref_ppl, delta_ppl_percent=(ppl / ref_ppl - 1) * 100,
                  mean_kld=float(kld.mean()), top1_agreement=agree / len(kld), tokens=len(kld))
    return result


def run_child(args, row: str, model: str, artifact: str | None, ref: dict, speed: bool) -> dict:
    command = [sys.executable, __file__, "--child", "--row", row, "--model", model, "--ids", ref["ids"],
               "--reference", ref["reference"], "--threads", str(args.threads), "--new", str(args.new)]
    command += ["--artifact", artifact] if artifact else []
    command += ["--speed"] if speed else []
    command += ["--speed-only"] if args.speed_only else []
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        print(f"row {row} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(lines[-1][len("RESULT "):])


# ----------------------------------------------------------------------------- tables

def print_table(subject: str, results: dict[str, dict], speed: bool) -> None:
    cols = ["row", "bits/w", "MiB", "load s", "RSS MiB"] + (["prefill t/s", "decode t/s"] if speed else []) + \
           ["ppl", "Δppl %", "mean KLD", "top-1 %", "quantize s"]
    print(f"\n### {subject}\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row, r in results.items():
        if "error" in r:
            print(f"| {row} | error: {r['error'][:80]} |")
            continue
        bits = r.get("bits_per_weight")
        cells = [row, f"{bits:.2f}" if bits else "-", f"{r.get('bytes', 0) / 2**20:.1f}", f"{r.get('load_s', 0):.2f}",
                 f"{r.get('peak_rss_mib', 0):.0f}"]
        if speed:
            cells += [f"{r.get('prefill_tok_s', 0):.0f}", f"{r.get('decode_tok_s', 0):.1f}"]
        q = "perplexity" in r
        cells += [f"{r['perplexity']:.3f}" if q else "-", f"{r['delta_ppl_percent']:+.2f}" if q else "-",
                  f"{r['mean_kld']:.4f}" if q else "-", f"{100 * r['top1_agreement']:.1f}" if q else "-",
                  f"{r['quantize_s']:.0f}" if "quantize_s" in r else "-"]
        print("| " + " | ".join(cells) + " |")


def plot(all_results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_results), figsize=(6 * len(all_results), 4.5), squeeze=False)
    for ax, (subject, results) in zip(axes[0], all_results.items()):
        for row, r in results.items():
            if "mean_kld" in r and r.get("bits_per_weight"):
                ax.scatter(r["bits_per_weight"], max(r["mean_kld"], 1e-6), s=30)
                ax.annotate(row, (r["bits_per_weight"], max(r["mean_kld"], 1e-6)), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("bits per weight (whole model, as stored)")
        ax.set_ylabel("mean KL divergence from float32 (nats/token)")
        ax.set_title(subject)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nplot: {path}")


# ----------------------------------------------------------------------------- per-layer kernels

def kernels_table(threads: int) -> None:
    """One matrix-vector product per SmolLM2 shape: float GEMM, aten's int8/int4 kernels, inductor's fused
    expression, and llmlab's C++ kernels."""
    import torch

    from llmlab.quant import kernels
    from llmlab.quant.int4 import Int4Linear, quantize_int4
    from llmlab.quant.int8 import Int8Linear

    torch.set_num_threads(threads)
    kernels.available()

    def best(fn, x, n=30) -> float:
        for _ in range(3):
            fn(x)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                fn(x)
            times.append((time.perf_counter() - t0) / n)
        return min(times)

    big = torch.ones(128 * 2**20)                      # 512 MB: far beyond every cache
    read_s = best(lambda v: v.sum(), big, n=3)
    print(f"\nmemory read bandwidth ({threads} threads, sum of 512 MB float32): {big.numel() * 4 / read_s / 1e9:.1f} GB/s")
    del big
    print("\n### one-row matrix-vector product, ms (GB/s of weights read)\n")
    print("| shape | f32 F.linear | bf16 F.linear | aten int8pack | aten int4pack | inductor int8 | inductor int4 g64 | llmlab int8 | llmlab int4 g64 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for out, inp in [(1536, 576), (576, 1536), (49152, 576)]:
        torch.manual_seed(0)
        linear = torch.nn.Linear(inp, out, bias=False)
        x = torch.randn(1, inp)
        w8, w4 = Int8Linear.from_linear(linear), Int4Linear.from_linear(linear, 64)
        wb = linear.weight.bfloat16()
        cells = {}
        cells["f32"] = (best(lambda v: torch.nn.functional.linear(v, linear.weight), x), out * inp * 4)
        cells["bf16"] = (best(lambda v: torch.nn.functional.linear(v, wb), x.bfloat16()), out * inp * 2)
        scales = w8.scales.float().squeeze(1)
        cells["aten8"] = (best(lambda v: torch._weight_int8pack_mm(v, w8.qweight, scales), x), out * inp)
        try:   # aten's CPU int4 kernel: codes packed by its own converter, w = (q - 8) * scale + zero, bf16
            q4, _, _ = quantize_int4(linear.weight, 64)
            packed = torch._convert_weight_to_int4pack_for_cpu(q4.to(torch.int32), 1)
            zero = w4.mins.float() + 8 * w4.scales.float()
            sz = torch.stack([w4.scales.float(), zero], -1).transpose(0, 1).contiguous().bfloat16()
            cells["aten4"] = (best(lambda v: torch._weight_int4pack_mm_for_cpu(v, packed, 64, sz), x.bfloat16()),
                              out * inp // 2)
        except (RuntimeError, AttributeError) as e:  # the op's packing API moves between releases
            cells["aten4"] = (float("nan"), 1)
            print(f"(aten int4: {type(e).__name__}: {str(e)[:120]})", file=sys.stderr)
        saved = dict(kernels._state)
        kernels._state["ok"] = False                  # the PyTorch expression, compiled
        f8 = torch.compile(lambda v: w8(v), fullgraph=True, dynamic=False)
        f4 = torch.compile(lambda v: w4(v), fullgraph=True, dynamic=False)
        cells["ind8"] = (best(f8, x), w8.storage_bytes())
        cells["ind4"] = (best(f4, x), w4.storage_bytes())
        kernels._state.update(saved)
        cells["ours8"] = (best(w8, x), w8.storage_bytes())
        cells["ours4"] = (best(w4, x), w4.storage_bytes())
        row = [f"{out}x{inp}"] + [f"{t * 1e3:.3f} ({b / t / 1e9:.1f})" for t, b in cells.values()]
        print("| " + " | ".join(row) + " |")


# ----------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subject", default="smollm2,float", help="smollm2, float, or both (comma-separated)")
    ap.add_argument("--rows", help="comma-separated rows (default: every row of each subject)")
    ap.add_argument("--tokens", type=int, default=8192, help="evaluation tokens per subject")
    ap.add_argument("--ctx", type=int, default=512, help="perplexity window (the float subject's context is 128)")
    ap.add_argument("--new", type=int, default=128, help="generated tokens for the decode speed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/llmlab-bench-quantize"))
    ap.add_argument("--kernels", action="store_true", help="only the per-layer kernel table")
    ap.add_argument("--speed-only", action="store_true", help="skip the quality pass (size, load, RSS and speed only)")
    ap.add_argument("--json-out", type=Path, help="also write all results here")
    ap.add_argument("--plot", type=Path, help="where the quality-vs-bits PNG goes (default: WORKDIR/quality_vs_bits.png)")
    # child-process options
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--row", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--artifact", help=argparse.SUPPRESS)
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    ap.add_argument("--reference", help=argparse.SUPPRESS)
    ap.add_argument("--speed", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        result = child_llama_cpp(args) if args.row.startswith("llama.cpp") else child_llmlab(args)
        print("RESULT " + json.dumps(result))
        return 0
    print(f"# benchmarks/quantize.py on {describe(args.threads)}")
    if args.kernels:
        kernels_table(args.threads)
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    all_results: dict[str, dict] = {}
    for subject in args.subject.split(","):
        rows = args.rows.split(",") if args.rows else ROWS[subject]
        rows = [r for r in rows if r in ROWS[subject]]
        if any(r.startswith("llama.cpp") for r in rows):
            import importlib.util
            if importlib.util.find_spec("llama_cpp") is None:
                print("llama-cpp-python is not installed (pip install -e '.[bench]'): skipping llama.cpp rows", file=sys.stderr)
                rows = [r for r in rows if not r.startswith("llama.cpp")]
        model = subject_model(subject, args.workdir)
        artifacts = prepare_artifacts(subject, rows, model, args.workdir)
        ref = prepare_reference(subject, model, args.workdir, args.tokens, args.ctx)
        results = {}
        for row in rows:
            art = artifacts.get(row, {})
            artifact = art.get("dir") or art.get("file")
            if row == "llama.cpp-q4_1":
                from llmlab.core.assets import smollm2_gguf
                artifact = str(smollm2_gguf())
            print(f"[{subject}] {row} ...", file=sys.stderr, flush=True)
            results[row] = {**run_child(args, row, model, artifact, ref, speed=subject == "smollm2"),
                            **{k: v for k, v in art.items() if k == "quantize_s"}}
        print_table(subject, results, speed=subject == "smollm2")
        all_results[subject] = results
    plot(all_results, args.plot or args.workdir / "quality_vs_bits.png")
    if args.json_out:
        args.json_out.write_text(json.dumps(all_results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
