"""`llmlab export SOURCE --to hf|gguf OUT`: our models in the formats other tools load.

    llmlab export runs/exp1 --to hf out/hf_dir              # transformers.AutoModelForCausalLM loads it
    llmlab export runs/exp1 --to gguf out/m.gguf --gguf-type q8_0   # llama.cpp loads it

SOURCE: an llmlab run directory or checkpoint file, a Hugging Face directory, a .gguf file, or smollm2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="llmlab run directory / checkpoint, Hugging Face directory, .gguf, or smollm2")
    parser.add_argument("--to", required=True, choices=["hf", "gguf"], help="output format")
    parser.add_argument("out", type=Path, help="output directory (hf) or file (gguf)")
    parser.add_argument("--gguf-type", default="f16", choices=["f32", "f16", "q8_0"],
                        help="tensor type of the matrices in a GGUF export (norms stay f32)")
    parser.add_argument("--no-tokenizer", action="store_true", help="write the weights without tokenizer data")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def run(args: argparse.Namespace) -> int:
    from llmlab.core.errors import LLMLabError
    from llmlab.model.source import resolve_source

    resolve_source(args.source)  # a source that does not exist fails here, before torch is imported
    if args.to == "gguf" and args.out.is_dir():
        raise LLMLabError(f"{args.out} is a directory: --to gguf writes one file, e.g. {args.out / 'model.gguf'}")
    if args.to == "hf" and args.out.is_file():
        raise LLMLabError(f"{args.out} is a file: --to hf writes a directory (config.json, model.safetensors, ...)")
    from llmlab.model.export import export_model

    summary = export_model(args.source, args.to, args.out, dtype=args.gguf_type,
                           with_tokenizer=not args.no_tokenizer)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote {args.to} export of {args.source}: {summary['parameters']:,} parameters, "
              f"{summary['bytes'] / 2**20:.1f} MiB")
        for f in summary["files"]:
            print(f"  {f}")
        for note in summary["notes"]:
            print(f"note: {note}")
    return 0
