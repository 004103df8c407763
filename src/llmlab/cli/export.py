"""`llmlab export SOURCE --to hf|gguf OUT`: our models in the formats other tools load.

    llmlab export runs/exp1 --to hf out/hf_dir              # transformers.AutoModelForCausalLM loads it
    llmlab export runs/exp1 --to gguf out/m.gguf --gguf-type q8_0   # llama.cpp loads it
    llmlab export out/quant_dir --to gguf out/m.gguf --dtype q4_1  # int4 group-32 layers written exactly
    llmlab export model.Q4_1.gguf --native-gguf --to gguf out/m.gguf --dtype q4_1   # the same blocks again
    llmlab export runs/ft-lora --to peft out/adapter        # a LoRA fine-tune as a PEFT adapter
    llmlab export runs/ft-lora --merge --to hf out/merged   # the adapter folded into its base

SOURCE: an llmlab run directory or checkpoint file, a Hugging Face directory, a `llmlab quantize`
directory, a .gguf file, or smollm2. A source with int8/int4 layers (a quantize directory, or a GGUF
with --native-gguf) is written with its own blocks where they are GGUF blocks (group 32: int8 as
Q8_0, int4 as Q4_1, or Q4_0 when its minimums are -8 x scale); other layers are requantized, and
the summary says which.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="llmlab run directory / checkpoint, Hugging Face directory, .gguf, or smollm2")
    parser.add_argument("--to", required=True, choices=["hf", "gguf", "peft"],
                        help="output format (peft: the adapter of a LoRA fine-tuning run, for PEFT)")
    parser.add_argument("out", type=Path, help="output directory (hf, peft) or file (gguf)")
    parser.add_argument("--merge", action="store_true",
                        help="a LoRA fine-tuning run: fold the adapter into its base and export the whole model "
                             "(a QLoRA adapter merges onto the NF4 weights it was trained against)")
    parser.add_argument("--gguf-type", "--dtype", dest="gguf_type", default="f16",
                        choices=["f32", "f16", "q8_0", "q4_0", "q4_1"],
                        help="tensor type of the matrices in a GGUF export (norms stay f32; rows that are not "
                             "a multiple of 32 weights f16)")
    parser.add_argument("--native-gguf", action="store_true",
                        help="a GGUF source: keep its Q8_0/Q4_0/Q4_1 blocks as int8/int4 layers, so a GGUF export "
                             "of the same type writes them unchanged instead of rounding dequantized weights")
    parser.add_argument("--no-tokenizer", action="store_true", help="write the weights without tokenizer data")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def run(args: argparse.Namespace) -> int:
    from llmlab.core.errors import LLMLabError
    from llmlab.model.source import resolve_source

    resolve_source(args.source)  # a source that does not exist fails here, before torch is imported
    if args.to == "gguf" and args.out.is_dir():
        raise LLMLabError(f"{args.out} is a directory: --to gguf writes one file, e.g. {args.out / 'model.gguf'}")
    if args.to in ("hf", "peft") and args.out.is_file():
        raise LLMLabError(f"{args.out} is a file: --to {args.to} writes a directory")
    if args.to == "peft":
        if args.merge:
            raise LLMLabError("--to peft writes the adapter alone; --merge goes with --to hf or --to gguf")
        from llmlab.finetune.adapter import export_peft
        summary = export_peft(args.source, args.out)
    else:
        from llmlab.model.export import export_model
        summary = export_model(args.source, args.to, args.out, dtype=args.gguf_type,
                               with_tokenizer=not args.no_tokenizer, merge=args.merge, native_gguf=args.native_gguf)
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
