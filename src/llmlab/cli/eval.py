"""`llmlab eval`: measure a model.

    llmlab eval ppl --model smollm2 --data wikitext-2
    llmlab eval ppl --model runs/q4 --reference smollm2 --data pydocs --limit-tokens 8192 --json
    llmlab eval ppl --model model.Q4_0.gguf --native-gguf --reference smollm2 --data-file text.txt

`ppl` is perplexity and bits per byte; with --reference also llama.cpp's quantization-quality
measures (`llama-perplexity --kl-divergence`): mean KL divergence from the reference, its tail, and
how often both models agree on the most likely next token (llmlab.eval.reference).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from llmlab.cli import DefaultsHelp
from llmlab.core.errors import LLMLabError

DATA = ("wikitext-2", "shakespeare", "shakespeare-tiny", "tinyshakespeare", "pydocs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Evaluate a model. `llmlab eval run` scores benchmarks (ARC, HellaSwag, PIQA, WinoGrande, "
                          "MMLU, GSM8K, ...) with lm-evaluation-harness's prompts and metrics; `llmlab eval compare` "
                          "tests whether two results differ; `llmlab eval ppl` scores a text: perplexity, bits per "
                          "byte, and with --reference the KL divergence and top-1 agreement against a reference model.")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    p = sub.add_parser("ppl", help="perplexity and bits per byte of a text; KL divergence vs --reference",
                       formatter_class=DefaultsHelp, description=(
                           "Score a text with a model over sliding windows of --ctx tokens every --stride tokens "
                           "(each token is scored once). With --reference, both models see the same windows and "
                           "each scored position also gives KL(reference || model) and whether their top "
                           "tokens agree, as llama.cpp's `llama-perplexity --kl-divergence` reports."))
    p.add_argument("--model", default="smollm2", help="smollm2, a .gguf file, a Hugging Face directory, an llmlab "
                                                     "run directory, or a `llmlab quantize` directory")
    p.add_argument("--native-gguf", action="store_true",
                   help="run a GGUF's own Q8_0/Q4_0/Q4_1 blocks as int8/int4 layers instead of dequantizing them")
    p.add_argument("--data", choices=DATA, help="the text to score (default: wikitext-2; pydocs = Python's "
                                                "documentation topics, always available offline)")
    p.add_argument("--data-file", metavar="PATH", help="score this UTF-8 text file instead of --data")
    p.add_argument("--ctx", type=int, default=512, help="tokens per window (at most the model's block_size)")
    p.add_argument("--stride", type=int, help="tokens between window starts, 1..ctx (default: --ctx); smaller gives "
                                              "every token more context and costs ctx/stride times the compute")
    p.add_argument("--limit-tokens", type=int, metavar="N", help="score only the first N tokens, for a quick look")
    p.add_argument("--reference", metavar="MODEL", help="compare with this model (any --model source; float32; it "
                                                        "must share the tokenizer): KL divergence, top-1 agreement, "
                                                        "perplexity ratio")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="--model's weights")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    from llmlab.cli.eval_tasks import add_compare_parser, add_run_parser
    add_run_parser(sub, DefaultsHelp)
    add_compare_parser(sub, DefaultsHelp)


def run(args: argparse.Namespace) -> int:
    if args.command == "ppl":
        return run_ppl(args)
    if args.command in ("run", "compare"):
        from llmlab.cli.eval_tasks import run_compare, run_tasks
        return run_tasks(args) if args.command == "run" else run_compare(args)
    raise LLMLabError("say what to evaluate: `llmlab eval run --tasks core-lite` (benchmarks), `llmlab eval ppl "
                      "--data wikitext-2` (perplexity) or `llmlab eval compare A.json B.json` (see `llmlab eval --help`)")


def _check_flags(args: argparse.Namespace) -> None:
    """Everything that can be checked before seconds of imports and model loading."""
    from llmlab.model.source import resolve_source

    if args.ctx < 1:
        raise LLMLabError(f"--ctx {args.ctx}: a window needs at least 1 token (try --ctx 512)")
    if args.stride is not None and not 1 <= args.stride <= args.ctx:
        raise LLMLabError(f"--stride {args.stride}: must be in 1..--ctx ({args.ctx}); a stride beyond the window "
                          "would skip tokens")
    if args.limit_tokens is not None and args.limit_tokens < 1:
        raise LLMLabError(f"--limit-tokens {args.limit_tokens}: must be at least 1")
    if args.data and args.data_file:
        raise LLMLabError(f"give --data {args.data} or --data-file {args.data_file}, not both")
    source = resolve_source(args.model)
    if args.native_gguf:
        if source.kind not in ("builtin", "gguf"):
            raise LLMLabError(f"--native-gguf runs a GGUF's quantized blocks, but --model {args.model} is a "
                              f"{source.kind} model; leave --native-gguf out")
    if args.reference:
        resolve_source(args.reference)


def _text(args: argparse.Namespace) -> tuple[str, str]:
    """(text, how to name it in the output)."""
    from llmlab.data.sources import load_text

    if args.data_file:
        return load_text(None, args.data_file)[0], args.data_file
    name = args.data or "wikitext-2"
    if name == "pydocs":
        from llmlab.core.assets import pydocs_topics
        topics = pydocs_topics()
        return "\n\n".join(topics[k] for k in sorted(topics)), name
    return load_text(name)[0], name


def _load(spec: str, device, dtype, native_gguf: bool = False):
    from llmlab.model.source import load_model

    model, tokenizer, source = load_model(spec, native_gguf=native_gguf)
    if tokenizer is None:
        raise LLMLabError(f"{source.path} has weights but no tokenizer (tokenizer.json): add one to score text")
    return model.to(device=device, dtype=dtype).eval(), tokenizer


def _fit_windows(args: argparse.Namespace, block_size: int, who: str) -> tuple[int, int]:
    """(ctx, stride): --ctx capped at the model's context, and --stride (default: ctx) with it."""
    ctx = args.ctx
    if ctx > block_size:
        print(f"llmlab eval ppl: --ctx {ctx} is more than {who}'s context ({block_size} tokens): using --ctx "
              f"{block_size}", file=sys.stderr)
        ctx = block_size
    stride = min(args.stride or ctx, ctx)
    if args.stride and stride != args.stride:
        print(f"llmlab eval ppl: --stride {args.stride} capped at the window: using --stride {stride}", file=sys.stderr)
    return ctx, stride


def _check_same_tokenizer(tokenizer, ref_tokenizer, text: str, ids: list[int], reference: str) -> None:
    """A KL divergence compares distributions over the same tokens: same vocabulary, same ids."""
    if ref_tokenizer.vocab_size != tokenizer.vocab_size:
        raise LLMLabError(f"--reference {reference} has a {ref_tokenizer.vocab_size}-token vocabulary, the model "
                          f"{tokenizer.vocab_size}: a KL divergence needs both to share the tokenizer")
    try:
        same = ref_tokenizer.encode(text)[:len(ids)] == ids
    except LLMLabError:   # e.g. a character tokenizer that lacks one of the text's characters
        same = False
    if not same:
        raise LLMLabError(f"--reference {reference} tokenizes the text into other ids than the model does: a KL "
                          "divergence needs both to share the tokenizer")


def run_ppl(args: argparse.Namespace) -> int:
    _check_flags(args)
    text, data_name = _text(args)
    from llmlab.core.device import pick_device, pick_dtype, setup_backends

    device = pick_device(args.device)
    setup_backends(device)
    model, tokenizer = _load(args.model, device, pick_dtype(args.dtype), args.native_gguf)
    reference = ref_tokenizer = None
    if args.reference:
        reference, ref_tokenizer = _load(args.reference, device, pick_dtype("float32"))
    try:
        ids = tokenizer.encode(text)
    except LLMLabError as e:   # a character tokenizer meeting a character it never saw
        raise LLMLabError(f"--model {args.model} cannot tokenize {data_name}: {e}") from None
    if args.limit_tokens:
        ids = ids[:args.limit_tokens + 1]   # the first id is only context
    if len(ids) < 2:
        raise LLMLabError(f"{data_name} is {len(ids)} token(s) long: perplexity needs at least 2")
    if reference is not None:
        _check_same_tokenizer(tokenizer, ref_tokenizer, text, ids, args.reference)
    block, who = model.config.block_size, args.model
    if reference is not None and reference.config.block_size < block:
        block, who = reference.config.block_size, f"the reference {args.reference}"
    ctx, stride = _fit_windows(args, block, who)
    scored = ids[1:]
    text_bytes = len(tokenizer.decode_bytes(scored) if hasattr(tokenizer, "decode_bytes")
                     else tokenizer.decode(scored).encode("utf-8"))
    print(f"llmlab eval ppl: scoring {len(scored):,} tokens of {data_name} with {args.model}"
          f"{f' against {args.reference}' if reference is not None else ''} (ctx {ctx}, stride {stride}, "
          f"{device.type})", file=sys.stderr)
    t0 = time.perf_counter()
    if reference is None:
        from llmlab.eval.perplexity import perplexity
        result = perplexity(model, ids, ctx, stride, text_bytes, device, progress_label="perplexity")
    else:
        from llmlab.eval.reference import compare
        result = compare(model, ids, ctx, stride, reference, device, text_bytes, progress_label="perplexity+KLD")
    report = {"perplexity": result["perplexity"], "bits_per_byte": result.get("bits_per_byte"),  # None: 0 bytes
              "tokens": result["tokens"], "nll": result["nll"], "model": args.model, "data": data_name,
              "ctx": ctx, "stride": stride}
    if reference is not None:
        report["reference"] = {"perplexity": result["reference_perplexity"], "model": args.reference}
        report.update({k: result[k] for k in ("ppl_ratio", "delta_ppl_percent", "mean_kld", "kld_p99", "kld_max",
                                              "top1_agreement")})
    report["seconds"] = round(time.perf_counter() - t0, 3)
    print(json.dumps(report, indent=2) if args.json else _table(report))
    return 0


def _table(r: dict) -> str:
    rows = [("model", r["model"]),
            ("data", f"{r['data']}: {r['tokens']:,} tokens, ctx {r['ctx']}, stride {r['stride']}"),
            ("perplexity", f"{r['perplexity']:.4f}"),
            ("bits per byte", "-" if r["bits_per_byte"] is None else f"{r['bits_per_byte']:.4f}"),
            ("nll per token", f"{r['nll']:.4f}")]
    if "reference" in r:
        rows += [("reference", f"{r['reference']['model']}: perplexity {r['reference']['perplexity']:.4f}"),
                 ("ppl ratio", f"{r['ppl_ratio']:.5f} ({r['delta_ppl_percent']:+.3f}%)"),
                 ("mean KLD", f"{r['mean_kld']:.6f} (p99 {r['kld_p99']:.6f}, max {r['kld_max']:.6f})"),
                 ("same top-1", f"{100 * r['top1_agreement']:.2f}%")]
    rows.append(("time", f"{r['seconds']:.1f} s ({r['tokens'] / max(r['seconds'], 1e-9):,.0f} tokens/s)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
