"""`llmlab data run|report|tokenize`: curate raw text into clean, deduplicated, tokenized shards.

    llmlab data run pipeline.toml
    llmlab data run --recipe web-basic --input raw/ --out clean/ [--workers 2] [--engine dask]
    llmlab data recipe web-basic [--input raw/] [--out clean/] > pipeline.toml
    llmlab data report clean/
    llmlab data tokenize clean/ --tokenizer tok/ --out shards/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run a curation pipeline (TOML config or a built-in recipe)")
    run.add_argument("config", nargs="?", type=Path, help="pipeline.toml")
    run.add_argument("--recipe", help="built-in recipe instead of a config: web-basic, prose, dedup-only "
                     "(`llmlab data recipe NAME` prints its TOML)")
    run.add_argument("--input", nargs="+", help="input files/directories (with --recipe, or overriding the config)")
    run.add_argument("--out", help="output directory (overrides the config)")
    run.add_argument("--workers", type=int, help="parallel worker processes (overrides the config)")
    run.add_argument("--engine", choices=["local", "dask"], help="execution engine (overrides the config)")
    run.add_argument("--format", choices=["jsonl", "parquet"],
                     help="output part files: jsonl (gzip by default) or parquet (zstd; needs pyarrow) (overrides the config)")
    run.add_argument("--json", action="store_true", help="print the stats as JSON")
    recipe = sub.add_parser("recipe", help="print a built-in recipe as a complete pipeline.toml, every key "
                                           "with its help (save it, edit it, run it)")
    recipe.add_argument("name", help="web-basic, prose or dedup-only")
    recipe.add_argument("--input", nargs="+", help="input paths to write into [input] paths (default: raw/)")
    recipe.add_argument("--out", default="clean/", help="output directory to write into [output] dir")
    report = sub.add_parser("report", help="markdown + PNG report of a curated directory")
    report.add_argument("directory", type=Path)
    report.add_argument("--json", action="store_true", help="print the stats as JSON")
    tok = sub.add_parser("tokenize", help="tokenize curated JSONL into the trainer's token shards")
    tok.add_argument("directory", type=Path)
    tok.add_argument("--tokenizer", required=True, help="tokenizer dir, tokenizer.json, .gguf or smollm2")
    tok.add_argument("--out", required=True, type=Path, help="token dataset directory")
    tok.add_argument("--val-fraction", type=float, default=0.05, help="fraction of documents in the val split")
    tok.add_argument("--workers", type=int, default=1, help="parallel encoding processes")
    tok.add_argument("--json", action="store_true", help="print the summary as JSON")


def _run(args: argparse.Namespace) -> int:
    from llmlab.core.errors import LLMLabError
    from llmlab.data.curation.executor import run_pipeline
    from llmlab.data.curation.pipeline import load_config, recipe_config
    from llmlab.data.curation.report import render_markdown

    if args.config and args.recipe:
        raise LLMLabError("give a pipeline.toml or --recipe, not both")
    if args.config:
        cfg = load_config(args.config)
        if args.input:
            cfg.input.paths = list(args.input)
        if args.out:
            cfg.output.dir = args.out
    elif args.recipe:
        if not args.input or not args.out:
            raise LLMLabError("--recipe needs --input and --out")
        cfg = recipe_config(args.recipe, args.input, args.out)
    else:
        raise LLMLabError("give a pipeline.toml or --recipe NAME --input DIR --out DIR")
    if not cfg.input.paths:
        raise LLMLabError("no input: set [input] paths in the config or pass --input")
    if args.workers:
        cfg.execution.workers = args.workers
    if args.engine:
        cfg.execution.engine = args.engine
    if args.format:
        cfg.output.format = args.format
    stats = run_pipeline(cfg)
    if args.json:
        print(json.dumps({k: v for k, v in stats.items() if k != "config"}, indent=2))
    else:
        print(render_markdown(stats))
        print(f"output: {cfg.output.dir}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "run":
        return _run(args)
    if args.action == "recipe":
        from llmlab.data.curation.pipeline import recipe_toml
        print(recipe_toml(args.name, args.input, args.out), end="")
        return 0
    if args.action == "report":
        from llmlab.data.curation.report import write_report
        result = write_report(args.directory)
        if args.json:
            print(json.dumps(result["stats"] | {"report": result["report"], "images": result["images"]}, indent=2))
        else:
            print(result["markdown"])
            print(f"report: {result['report']}")
        return 0
    from llmlab.data.curation.tokenize import tokenize_curated
    summary = tokenize_curated(args.directory, args.tokenizer, args.out, args.val_fraction, args.workers)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{args.out}: train {summary['documents']['train']} documents / {summary['tokens']['train']} tokens, "
              f"val {summary['documents']['val']} / {summary['tokens']['val']} (separator: {summary['separator']!r})")
    return 0
