"""`llmlab sample RUN`: generate text from a trained run's checkpoint, streamed to stdout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run directory (or a checkpoint file)")
    parser.add_argument("--prompt", default="\n", help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=500, help="tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (0: greedy)")
    parser.add_argument("--top-k", type=int, default=200, help="sample among the k most likely tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (1: off)")
    parser.add_argument("--seed", type=int, default=1337, help="random seed")
    parser.add_argument("--checkpoint", choices=["ckpt", "best"], default="best",
                        help="best.pt (lowest val loss) or ckpt.pt (latest); falls back to ckpt.pt")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")


def run(args: argparse.Namespace) -> int:
    import torch

    from llmlab.core.device import pick_device
    from llmlab.core.errors import LLMLabError
    from llmlab.model.config import ModelConfig
    from llmlab.model.transformer import Transformer
    from llmlab.core.config import config_from_dict
    from llmlab.tokenizer import tokenizer_from_dict
    from llmlab.train.checkpoint import BEST, CHECKPOINT, load_checkpoint
    from llmlab.train.sampling import sample_tokens

    name = BEST if args.checkpoint == "best" and (args.run / BEST).is_file() else CHECKPOINT
    state = load_checkpoint(args.run, name)
    try:
        model_config = config_from_dict(ModelConfig, state["model_config"])
        tokenizer = tokenizer_from_dict(state["tokenizer"])
    except KeyError as e:
        raise LLMLabError(f"{args.run} checkpoint lacks {e}: it was not written by `llmlab train`") from None
    device = pick_device(args.device)
    model = Transformer(model_config)
    model.load_state_dict(state["model"])
    model.to(device)
    prompt_ids = tokenizer.encode(args.prompt)
    if not prompt_ids:
        raise LLMLabError("the prompt encodes to no tokens; give a non-empty --prompt")
    generator = torch.Generator().manual_seed(args.seed)
    sys.stdout.write(args.prompt)
    for token in sample_tokens(model, prompt_ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                               generator, device):
        sys.stdout.write(tokenizer.decode([token]))
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
