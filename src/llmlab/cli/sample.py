"""`llmlab sample RUN`: generate text from a trained run's checkpoint, streamed to stdout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run directory (uses best.pt, else ckpt.pt) or a checkpoint file")
    parser.add_argument("--prompt", default="\n", help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=500, help="tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (0: greedy)")
    parser.add_argument("--top-k", type=int, default=200, help="sample among the k most likely tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (1: off)")
    parser.add_argument("--seed", type=int, default=1337, help="random seed")
    parser.add_argument("--adapter", help="a LoRA adapter to put on the run's model (a `llmlab finetune` run or a PEFT "
                                          "adapter directory)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")


def run(args: argparse.Namespace) -> int:
    from llmlab.core.errors import LLMLabError

    # Checked before importing the engine (and torch): a mistyped path fails at once.
    if not args.run.exists():
        raise LLMLabError(f"{args.run} does not exist: give a run directory made by `llmlab train`")
    for flag, value, ok, need in (
            ("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 1, "must be at least 1"),
            ("--temperature", args.temperature, args.temperature >= 0, "must be 0 or more (0: greedy)"),
            ("--top-k", args.top_k, args.top_k >= 0, "must be 0 or more (0: all tokens)"),
            ("--top-p", args.top_p, 0 < args.top_p <= 1, "must be in (0, 1] (1: off)")):
        if not ok:
            raise LLMLabError(f"{flag} {value}: {need}")
    from llmlab.infer import Engine, SamplingConfig

    engine = Engine.load(args.run, device=args.device, adapter=args.adapter)
    config = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, ignore_eos=True)
    sys.stdout.write(args.prompt)
    # "shift": a small model's context (e.g. 128 characters) is shorter than the text we want.
    for delta in engine.stream(args.prompt, config, raw=True, overflow="shift"):
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
