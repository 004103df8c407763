"""`llmlab train`: train a GPT from a preset, overriding any field; or resume a run exactly."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from llmlab.core.config import add_config_flags, apply_flags, get_preset
from llmlab.data.sources import SOURCES
from llmlab.model.config import ModelConfig
from llmlab.train.config import PRESETS, DataConfig, TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train a decoder-only Transformer. Start from --preset and override any field below; the resolved "
        "config is saved to OUT/config.json. Data sources: " + ", ".join(SOURCES) + ", or a token dataset dir.")
    parser.add_argument("--preset", default="shakespeare-char", choices=list(PRESETS),
                        help="named starting configuration (default: shakespeare-char)")
    parser.add_argument("--out", type=Path, help="run directory (default: runs/<preset>-<timestamp>)")
    parser.add_argument("--resume", type=Path, metavar="DIR",
                        help="continue the run in DIR exactly where its checkpoint stopped")
    add_config_flags(parser, ModelConfig, "model (ModelConfig)")
    add_config_flags(parser, DataConfig, "data (DataConfig)")
    add_config_flags(parser, TrainConfig, "training (TrainConfig)")


def _given(args: argparse.Namespace, cls: type) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def run(args: argparse.Namespace) -> int:
    from llmlab.train.run import default_run_dir, resume, start

    if args.resume:
        if _given(args, ModelConfig) or _given(args, DataConfig):
            from llmlab.core.errors import LLMLabError
            raise LLMLabError("model and data settings are fixed by the run being resumed; only training "
                              "budgets and logging flags may be given with --resume")
        state = resume(args.resume, _given(args, TrainConfig))
        run_dir = args.resume
    else:
        preset = get_preset(PRESETS, args.preset)
        config = dataclasses.replace(preset, model=apply_flags(preset.model, args), data=apply_flags(preset.data, args),
                                     train=apply_flags(preset.train, args))
        run_dir = args.out or default_run_dir(args.preset)
        state = start(config, run_dir)
    print(f"llmlab train: stopped ({state.stop_reason}) at step {state.step} after {state.elapsed_s:.0f}s; "
          f"best val loss {state.best_val:.4f}; run saved in {run_dir}", file=sys.stderr)
    if state.stop_reason == "interrupted":
        print(f"continue with: llmlab train --resume {run_dir}", file=sys.stderr)
        return 130
    return 0
