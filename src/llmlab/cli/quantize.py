"""`llmlab quantize`: a model's weights in fewer bits, written as a directory any --model flag opens.

    llmlab quantize --model smollm2 --method int8 --out q/int8
    llmlab quantize --model smollm2 --method int4 --group-size 64 --out q/int4
    llmlab quantize --model smollm2 --method gptq --bits 4 --group-size 64 --calib builtin:pydocs --out q/gptq4
    llmlab quantize --model smollm2 --method awq --out q/awq4
    llmlab quantize --model smollm2 --method nf4 --out q/nf4
    llmlab chat --model q/gptq4 --compile
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from llmlab.core.config import add_config_flags
    from llmlab.quant.quantize import QuantizeConfig

    parser.add_argument("--model", default="smollm2", help="the model to quantize: smollm2, a .gguf file, a Hugging Face "
                                                           "directory, or an llmlab run directory")
    parser.add_argument("--out", type=Path, required=True, help="directory to write (config.json, model.safetensors, tokenizer)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it already holds a model")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    add_config_flags(parser, QuantizeConfig, "quantization (QuantizeConfig)")


def run(args: argparse.Namespace) -> int:
    from llmlab.core.config import apply_flags
    from llmlab.core.errors import LLMLabError
    from llmlab.model.source import resolve_source
    from llmlab.quant.quantize import QuantizeConfig

    config = apply_flags(QuantizeConfig(), args)
    config.validate()
    source = resolve_source(args.model)
    if source.kind == "quantized":
        raise LLMLabError(f"{args.model} is already quantized: quantize its source model instead")
    if (args.out / "config.json").exists():
        from llmlab.model.source import is_quantized_dir
        if not is_quantized_dir(args.out):   # a run or HF directory: --force must not overwrite its config
            raise LLMLabError(f"{args.out} holds another kind of model or run: choose an empty --out directory")
        if not args.force:
            raise LLMLabError(f"{args.out} already holds a quantized model: choose another --out, or pass --force "
                              "to overwrite it")

    from llmlab.model.source import load_model
    from llmlab.quant.artifact import save_quantized
    from llmlab.quant.quantize import quantize_model

    model, tokenizer, source = load_model(source, merge_adapters=True)
    if tokenizer is None and config.method in ("gptq", "awq"):
        raise LLMLabError(f"{args.model} has no tokenizer, which {config.method} needs to tokenize its calibration text")
    model = model.float().eval()
    print(f"llmlab quantize: {source.name} -> {config.summary()}", file=sys.stderr)
    report = quantize_model(model, tokenizer, config)
    save_quantized(model, tokenizer, args.out, config.to_dict(), source.as_dict(), report)
    report = {"out": str(args.out), **report}
    if args.json:
        print(json.dumps(report, default=str))
    else:
        print(f"wrote {args.out}: {report['bytes'] / 2**20:.1f} MiB, {report['bits_per_weight']:.2f} bits per weight "
              f"overall, in {report['seconds']:.1f} s")
    return 0
