"""`llmlab inspect`: look inside any model llmlab loads, as tables, JSON and PNG pictures.

    llmlab inspect attention   --prompt "..." --layers 0,8,29     a grid of heads per layer
    llmlab inspect logit-lens  --prompt "..." --target " Rome"    each layer's guess for the next token
    llmlab inspect surprise    --text-file f.txt                  per-token loss as coloured text (HTML too)
    llmlab inspect activations --prompt "..."                     residual norms, MLP histograms, outliers
    llmlab inspect heads       --task induction                   every head scored on a probe, ranked
    llmlab inspect ablate      --prompt "..." --head 12.3         knock out heads, see the prediction move
    llmlab inspect embeddings  --tokens "king,queen,the,a"        a 2-D PCA picture of chosen tokens

The probes live in llmlab.inspect, one module each; this file parses flags, loads the model once
and prints.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmlab.cli import DefaultsHelp
from llmlab.core.errors import LLMLabError

COMMANDS = {
    "attention": "attention maps of chosen layers: a grid of heads per layer, as PNG heatmaps",
    "logit-lens": "the top tokens each layer would predict (nostalgebraist 2020), as a table and a heatmap",
    "surprise": "per-token loss of a text as coloured text (HTML and terminal), the worst spans listed",
    "activations": "residual-stream norms per layer and position, MLP activation histograms, outlier dimensions",
    "heads": "score every head on a built-in probe (induction, previous-token), ranked, with a plot",
    "ablate": "zero (or mean-) ablate heads and show how the next-token distribution changes",
    "embeddings": "a 2-D PCA projection of chosen tokens' embeddings, and their nearest neighbours",
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2", help="smollm2, a .gguf file, a Hugging Face directory, an llmlab "
                                                     "run directory, or a `llmlab quantize` directory")
    p.add_argument("--adapter", metavar="DIR", help="a LoRA adapter (fine-tuning run or PEFT directory) put on the model")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="the model's weights")
    p.add_argument("--out", default="insp", metavar="DIR", help="directory for the PNG (and HTML) files")
    p.add_argument("--json", action="store_true", help="print one JSON object with the numbers (and the files written)")


def _prompt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", help="the text to run through the model")
    p.add_argument("--prompt-file", metavar="PATH", help="read the prompt from this UTF-8 file instead")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user message in the model's chat "
                                                       "template, ending where the reply starts")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Look inside a model: what its heads attend to, what each layer would predict, where a text "
                          "surprises it, how its activations are distributed, which heads do induction, what removing "
                          "a head changes, and how its embeddings lie. Every command prints a table (or --json) and "
                          "writes pictures to --out. Chapter 10 of the guide reads each picture on SmolLM2.")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    p = {name: sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".",
                              formatter_class=DefaultsHelp)
         for name, text in COMMANDS.items()}
    for name, sp in p.items():
        _common(sp)
        if name in ("attention", "logit-lens", "activations", "ablate"):
            _prompt(sp)
    p["attention"].add_argument("--layers", help="comma-separated layer indices (negative count from the end); "
                                                 "default: the first, middle and last layer")
    p["logit-lens"].add_argument("--target", help="the token to follow at the last position, as text (e.g. ' Rome', "
                                                  "with its leading space); default: the model's own top-1")
    p["logit-lens"].add_argument("--top-k", type=int, default=5, help="top tokens listed per layer")
    p["logit-lens"].add_argument("--positions", type=int, default=48,
                                 help="read the last N positions of the prompt for the heatmap (0: all; the "
                                      "read-out costs a vocabulary projection per layer and position)")
    p["logit-lens"].add_argument("--every", type=int, default=1, help="print every N-th layer in the table "
                                                                     "(the embedding and the output always)")
    s = p["surprise"]
    s.add_argument("--text", help="the text to score")
    s.add_argument("--text-file", metavar="PATH", help="read the text from this UTF-8 file instead")
    s.add_argument("--window", type=int, help="tokens per scoring window (default: the model's block_size)")
    s.add_argument("--stride", type=int, help="tokens between windows for long texts (default: window / 2)")
    s.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    s.add_argument("--spans", type=int, default=10, help="how many of the most surprising spans to list")
    s.add_argument("--span-tokens", type=int, default=8, help="tokens per listed span")
    s.add_argument("--no-color", action="store_true", help="plain terminal text, surprising tokens marked [loss]")
    a = p["activations"]
    a.add_argument("--threshold", type=float, default=6.0, help="magnitude that makes a feature an outlier "
                                                                "(Dettmers et al. 2022 use 6)")
    a.add_argument("--bins", type=int, default=60, help="histogram bins for the MLP activations")
    h = p["heads"]
    h.add_argument("--task", default="induction", choices=("induction", "previous-token"), help="the probe")
    h.add_argument("--length", type=int, default=50, help="random tokens per probe sequence (shown twice)")
    h.add_argument("--batch", type=int, default=4, help="probe sequences averaged over")
    h.add_argument("--seed", type=int, default=0, help="seed of the random tokens")
    h.add_argument("--top", type=int, default=10, help="heads listed")
    h.add_argument("--ablate-top", type=int, default=0, metavar="K",
                   help="the causal check: the probe's loss on the second copy intact, with the K best heads "
                        "ablated, and with K other heads (three random draws) ablated")
    b = p["ablate"]
    b.add_argument("--head", help="heads to ablate together, LAYER.HEAD, comma-separated (e.g. 12.3,5.0)")
    b.add_argument("--scan", action="store_true", help="ablate every head alone and rank them by the change "
                                                       "(layers x heads forward passes)")
    b.add_argument("--mode", default="zero", choices=("zero", "mean"), help="replace a head's output by zero or by "
                                                                          "its mean over the prompt's positions")
    b.add_argument("--top-k", type=int, default=5, help="top tokens listed before and after")
    e = p["embeddings"]
    e.add_argument("--tokens", required=True, help="comma-separated words or tokens to place (at least two)")
    e.add_argument("--table", default="input", choices=("input", "output"),
                   help="the token embedding (input) or the output head's rows (the same when tied)")
    e.add_argument("--neighbours", type=int, default=5, help="nearest vocabulary tokens listed per single-token word")


def _text(args: argparse.Namespace, flag: str) -> str:
    inline, path = getattr(args, flag), getattr(args, f"{flag}_file")
    if inline and path:
        raise LLMLabError(f"give --{flag} or --{flag}-file, not both")
    if path:
        text = Path(path).read_text(encoding="utf-8")
    elif inline:
        text = inline
    else:
        raise LLMLabError(f"say what to look at: --{flag} \"...\" or --{flag}-file PATH")
    if not text.strip():
        raise LLMLabError(f"--{flag}{'-file ' + path if path else ''} is empty: give some text")
    return text


def _load(args: argparse.Namespace):
    from llmlab.core.device import pick_device, pick_dtype, setup_backends
    from llmlab.model.source import load_model

    device = pick_device(args.device)
    setup_backends(device)
    model, tokenizer, source = load_model(args.model, adapter=args.adapter)
    if tokenizer is None:
        raise LLMLabError(f"{source.path} has weights but no tokenizer (tokenizer.json): add one to inspect text")
    return model.to(device=device, dtype=pick_dtype(args.dtype)).eval(), tokenizer


def run(args: argparse.Namespace) -> int:
    if args.command is None:
        raise LLMLabError("say what to look at: " + ", ".join(COMMANDS) + " (see `llmlab inspect --help`)")
    _check_flags(args)
    text = None
    if args.command in ("attention", "logit-lens", "activations", "ablate"):
        text = _text(args, "prompt")
    elif args.command == "surprise":
        text = _text(args, "text")
    model, tokenizer = _load(args)
    out = Path(args.out)
    from llmlab.cli.inspect_runners import RUNNERS

    result, report = RUNNERS[args.command](args, model, tokenizer, text, out)
    if args.json:
        print(json.dumps({"command": args.command, "model": args.model, **result}, ensure_ascii=False))
    else:
        print(report)
        for path in result.get("files", []):
            print(f"wrote {path}")
    return 0


def _check_flags(args: argparse.Namespace) -> None:
    """What can be checked before the model loads (seconds)."""
    for flag in ("top_k", "every", "spans", "span_tokens", "batch_size", "bins", "length", "batch", "top", "neighbours"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise LLMLabError(f"--{flag.replace('_', '-')} {value}: must be at least 1")
    if getattr(args, "positions", 0) < 0:
        raise LLMLabError(f"--positions {args.positions}: give 0 (every position) or a positive count")
    if args.command == "ablate" and not args.head and not args.scan:
        raise LLMLabError("say which heads: --head LAYER.HEAD (e.g. 12.3), or --scan to try every head")
