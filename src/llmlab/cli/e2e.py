"""`llmlab e2e`: one command from raw built-in text to a report card, every stage cached and resumable.

    llmlab e2e --recipe cpu-small --out runs/e2e
    llmlab e2e --resume runs/e2e
    llmlab e2e --recipe tiny --out /tmp/e2e --set pretrain.max_steps=100 model.n_layer=3
    llmlab e2e --recipe cpu-small --out runs/e2e --sweep model.n_layer=2,4,6
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STAGES = ("curate", "tokenizer", "sweep", "pretrain", "sft", "eval", "report")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Make a small language model from raw text to a report card: curate the built-in corpora (Shakespeare, "
        "Python's docs and standard-library source, and any --input) decontaminated against the eval tasks; train a "
        "BPE tokenizer; pretrain a Llama-style model; instruction-tune it on a chat set made from the corpus; "
        "evaluate base, tuned and SmolLM2-135M on the same benchmarks and on in-domain tasks from a held-out split; "
        "write OUT/report.md. Each stage is cached under OUT/<stage>/ by a hash of its settings and inputs: a rerun "
        "skips finished stages, continues an interrupted one (training at the exact step), and redoes a stage whose "
        "settings changed together with every stage after it.")
    parser.add_argument("--recipe", metavar="NAME|FILE.toml", default=argparse.SUPPRESS,
                        help="a preset: tiny (a test-sized run, under a minute), cpu-small (~30 min on 2 CPU cores, measured), "
                             "gpu-1b (a 1.04B model for one large GPU; documented, bring a corpus); or a TOML file "
                             "with base = \"<preset>\" and [section] tables overriding its settings "
                             "(default: cpu-small)")
    parser.add_argument("--out", type=Path, default=argparse.SUPPRESS,
                        help="output directory: OUT/<stage>/ per stage, OUT/recipe.json, OUT/report.md "
                             "(default: runs/e2e)")
    parser.add_argument("--resume", type=Path, metavar="OUT", default=argparse.SUPPRESS,
                        help="continue the pipeline in OUT with the recipe saved in OUT/recipe.json (plus any --set, "
                             "--input, --sweep given now); finished stages are skipped, a stopped one continues")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=argparse.SUPPRESS,
                        metavar="SECTION.KEY=VALUE",
                        help="override recipe settings, e.g. --set pretrain.max_steps=100 model.n_layer=3 "
                             "eval.reference= ; sections: data, tokenizer, model (ModelConfig), pretrain (TrainConfig; "
                             "max_steps = max_iters), sft (TrainConfig + chat set), eval, sweep. Lists take commas")
    parser.add_argument("--input", dest="inputs", nargs="+", action="extend", default=argparse.SUPPRESS, metavar="PATH",
                        help="extra raw text added to the corpus: files or directories (.txt, .md, .jsonl, .parquet, "
                             ".html, .py, ...); .py files are curated as code, the rest as prose")
    parser.add_argument("--sweep", metavar="model.KEY=V1,V2,V3", default=argparse.SUPPRESS,
                        help="also run a scaling sweep: train each size (e.g. model.n_layer=2,4,6 or "
                             "model.n_embd=64,96,128) for sweep.tokens_per_param tokens per parameter (default 20), "
                             "fit a power law in parameters and in compute (6ND), predict the next size, train it and "
                             "report the error (OUT/sweep/scaling.png, scaling.json)")
    parser.add_argument("--stages", choices=STAGES, metavar="STAGE", default=argparse.SUPPRESS,
                        help=f"run the pipeline up to and including this stage ({', '.join(STAGES)}); "
                             "later stages are left as they are")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved recipe and each stage's state (done, partial, to run) and stop")
    parser.add_argument("--json", action="store_true",
                        help="print the stage summary as JSON on stdout (status, seconds, CPU seconds, key per stage)")


def _recipe(args: argparse.Namespace):
    from llmlab.core.errors import LLMLabError
    from llmlab.e2e.recipe import load_recipe, read_recipe, with_mapping

    # Options left out are absent (argparse.SUPPRESS keeps "(default: None)" out of --help).
    for name, default in (("recipe", None), ("out", None), ("resume", None), ("overrides", []), ("inputs", []),
                          ("sweep", None), ("stages", None)):
        if not hasattr(args, name):
            setattr(args, name, default)

    if args.resume is not None:
        if args.recipe:
            raise LLMLabError("give --recipe (a new pipeline) or --resume OUT (the recipe saved there), not both")
        if args.out is not None and args.out != args.resume:
            raise LLMLabError("--resume OUT already names the output directory; leave out --out")
        if not args.resume.is_dir():
            raise LLMLabError(f"--resume {args.resume}: no such directory (give the --out of an earlier `llmlab e2e`)")
        recipe, out = read_recipe(args.resume), args.resume
    else:
        recipe, out = load_recipe(args.recipe or "cpu-small"), args.out or Path("runs/e2e")
        if out.exists() and not out.is_dir():
            raise LLMLabError(f"--out {out} is a file: give a directory for the pipeline's outputs (it is created)")
    if args.overrides:
        recipe = recipe.with_overrides(args.overrides)
    if args.inputs:
        from llmlab.e2e.corpus import input_files
        inputs = [str(Path(p).resolve()) for p in args.inputs]
        input_files(inputs)   # a missing or unreadable --input fails now, not after minutes of work
        recipe = with_mapping(recipe, {"data": {"inputs": recipe.data.inputs + [p for p in inputs
                                                                                if p not in recipe.data.inputs]}},
                              "--input")
    if args.sweep:
        recipe = with_mapping(recipe, {"sweep": {"spec": args.sweep}}, "--sweep")
    if args.stages == "sweep" and not recipe.sweep.spec:
        raise LLMLabError("--stages sweep: this recipe has no sweep; add one with --sweep model.n_layer=2,4,6")
    return recipe, out


def run(args: argparse.Namespace) -> int:
    from llmlab.e2e.pipeline import Pipeline, StageInterrupted
    from llmlab.e2e.recipe import describe

    recipe, out = _recipe(args)
    pipeline = Pipeline(recipe, out)
    if args.dry_run:
        rows = pipeline.status()
        if args.json:
            print(json.dumps({"recipe": recipe.to_dict(), "stages": rows}, indent=2))
        else:
            print(describe(recipe))
            for row in rows:
                print(f"{row['stage']:<24} {row['state']:<8} key {row['key']}")
        return 0
    try:
        summary = pipeline.run(upto=args.stages)
    except StageInterrupted as e:
        print(f"llmlab e2e: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"\nllmlab e2e: interrupted; continue with `llmlab e2e --resume {out}`", file=sys.stderr)
        return 130
    report = out / "report.md"
    summary["report"] = str(report) if report.is_file() and any(s["stage"] == "report" for s in summary["stages"]) \
        else None
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        total = sum(s["seconds"] for s in summary["stages"] if s["status"] != "cached")
        ran = [s["stage"] for s in summary["stages"] if s["status"] != "cached"]
        print(f"llmlab e2e: {len(ran)} stage(s) ran ({', '.join(ran) or 'none: all cached'}) in {total:.0f}s; "
              f"outputs in {out}" + (f"; report: {report}" if summary["report"] else ""), file=sys.stderr)
    return 0
