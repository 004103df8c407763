"""`llmlab serve`: a model behind an OpenAI-compatible HTTP API, with continuous batching.

    llmlab serve                                  # SmolLM2 on http://127.0.0.1:8000
    llmlab serve --model runs/shakespeare --port 9000 --max-batch 32
    llmlab serve --adapter math=runs/lora-math --adapter chat=runs/lora-chat   # models smollm2:math, ...

Then any OpenAI client works: `OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-")`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from llmlab.core.config import add_config_flags
    from llmlab.infer.scheduler import SchedulerConfig
    from llmlab.serve.config import ServeConfig

    parser.add_argument("--model", default="smollm2", help="smollm2, a .gguf file, a Hugging Face model directory, "
                                                        "an llmlab run directory, or a `llmlab quantize` directory")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                        help="serve a LoRA adapter (a `llmlab finetune` run or PEFT directory) beside the base, as "
                             "model BASE:NAME; repeat for more. All share the base weights and one batch")
    parser.add_argument("--native-gguf", action="store_true",
                        help="run a GGUF's own Q8_0/Q4_0/Q4_1 blocks as int8/int4 layers instead of dequantizing")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16 weights (and activations)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="uvicorn's log level (info logs every request)")
    add_config_flags(parser, SchedulerConfig, "continuous batching (SchedulerConfig)", skip=("prefix_cache",))
    parser.add_argument("--no-prefix-cache", action="store_true",
                        help="do not share the KV blocks of identical prompt prefixes between requests")
    add_config_flags(parser, ServeConfig, "server (ServeConfig)", skip=("cors_origins",))
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="let pages from this origin (e.g. http://localhost:3000, or *) call the API; repeatable")


def parse_adapters(values: list[str]) -> dict[str, Path]:
    """["math=runs/lora-math", ...] -> {"math": Path("runs/lora-math")}, or an error naming the flag."""
    from llmlab.core.errors import LLMLabError

    adapters: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise LLMLabError(f"--adapter {value!r}: write NAME=PATH, e.g. --adapter math=runs/lora-math")
        if ":" in name or "/" in name:
            raise LLMLabError(f"--adapter {value!r}: the name may not contain ':' or '/' (it becomes model BASE:NAME)")
        if name in adapters:
            raise LLMLabError(f"--adapter {name}=...: given twice; each adapter needs its own name")
        if not Path(path).exists():
            raise LLMLabError(f"--adapter {value!r}: {path} does not exist")
        adapters[name] = Path(path)
    return adapters


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from llmlab.core.config import apply_flags
    from llmlab.infer.scheduler import SchedulerConfig
    from llmlab.serve.config import ServeConfig
    from llmlab.serve.server import run_server

    scheduler = apply_flags(SchedulerConfig(), args)
    if args.no_prefix_cache:
        scheduler = dataclasses.replace(scheduler, prefix_cache=False)
    serve = apply_flags(ServeConfig(), args)
    if serve.model_name is None:   # the name clients send as "model": smollm2, or the file/directory's name
        name = args.model if args.model == "smollm2" else Path(args.model).stem if args.model.endswith(".gguf") \
            else Path(args.model).name
        serve = dataclasses.replace(serve, model_name=name)
    if args.cors_origin:
        serve = dataclasses.replace(serve, cors_origins=list(args.cors_origin))
    adapters = parse_adapters(args.adapter)
    if serve.api_key_file:   # a bad key file fails before the model loads
        from llmlab.serve.config import read_api_keys
        read_api_keys(serve.api_key_file)

    def load_engine():
        from llmlab.finetune.adapter import adapter_weights
        from llmlab.infer import Engine
        from llmlab.infer.continuous import ContinuousEngine

        engine = Engine.load(args.model, args.device, args.dtype, native_gguf=args.native_gguf)
        weights = {name: adapter_weights(engine.model, path, engine.source) for name, path in adapters.items()}
        return ContinuousEngine.from_engine(engine, scheduler, weights or None)

    return run_server(load_engine, serve, args.log_level)
