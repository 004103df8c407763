"""`llmlab train`: train a GPT from a preset, overriding any field; or resume a run exactly."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from llmlab.core.config import add_config_flags, apply_flags, get_preset, given_flags
from llmlab.core.errors import LLMLabError
from llmlab.model.config import ModelConfig
from llmlab.train.config import PRESETS, DataConfig, TrainConfig

# Nothing here imports torch (or llmlab.data, which does): flags are parsed and every config is
# validated in a fraction of a second, so a bad flag fails before seconds of imports and data loading.


def _preset_named(argv: list[str]) -> str:
    """The --preset among the verb's arguments (before parsing), so --help can show its values."""
    for i, arg in enumerate(argv):
        if arg == "--preset" and i + 1 < len(argv) and argv[i + 1] in PRESETS:
            return argv[i + 1]
        if arg.startswith("--preset=") and arg.partition("=")[2] in PRESETS:
            return arg.partition("=")[2]
    return "shakespeare-char"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    preset_name = _preset_named(getattr(parser, "verb_argv", []))
    preset = PRESETS[preset_name]
    parser.description = (
        "Train a decoder-only Transformer. Start from --preset and override any field below; the resolved "
        "config is saved to OUT/config.json. Data: see --data and --data-file below. The defaults shown "
        f"are preset {preset_name}'s values (`--help --preset NAME` shows another's; --print-config the "
        "resolved config).")
    parser.add_argument("--preset", default="shakespeare-char", choices=list(PRESETS),
                        help="named starting configuration")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (the preset with your flags applied) as JSON and exit "
                             "without training")
    parser.add_argument("--out", type=Path, help="run directory (default: runs/<preset>-<timestamp>)")
    parser.add_argument("--init", metavar="MODEL",
                        help="start from this pretrained model instead of random weights: smollm2, a .gguf file, a "
                             "Hugging Face directory or an llmlab run directory; its architecture and tokenizer are "
                             "used (model flags are ignored), and the preset's block size is the training window "
                             "(--seq-len to change it)")
    parser.add_argument("--resume", type=Path, metavar="DIR",
                        help="continue the run in DIR exactly where its checkpoint stopped")
    add_config_flags(parser, ModelConfig, f"model (ModelConfig; defaults of preset {preset_name})", shown=preset.model)
    add_config_flags(parser, DataConfig, f"data (DataConfig; defaults of preset {preset_name})", shown=preset.data)
    add_config_flags(parser, TrainConfig, f"training (TrainConfig; defaults of preset {preset_name})",
                     shown=preset.train)


def run(args: argparse.Namespace) -> int:
    if args.resume:
        if given_flags(ModelConfig, args) or given_flags(DataConfig, args) or args.init:
            raise LLMLabError("model and data settings are fixed by the run being resumed; only training "
                              "budgets and logging flags may be given with --resume")
        if not args.resume.exists():
            raise LLMLabError(f"--resume {args.resume}: no such run directory (give the --out of an earlier "
                              "`llmlab train`)")
        from llmlab.train.run import resume
        state = resume(args.resume, given_flags(TrainConfig, args))
        run_dir = args.resume
    else:
        preset = get_preset(PRESETS, args.preset)
        config = dataclasses.replace(preset, model=apply_flags(preset.model, args), data=apply_flags(preset.data, args),
                                     train=apply_flags(preset.train, args), init=args.init)
        if args.print_config:
            from llmlab.core.config import config_to_dict
            print(json.dumps(config_to_dict(config), indent=2))
            return 0
        if config.data.data_file and not Path(config.data.data_file).is_file():
            what = "is a directory, not a text file" if Path(config.data.data_file).is_dir() else "no such file"
            raise LLMLabError(f"--data-file {config.data.data_file}: {what}")
        if args.init:
            from llmlab.model.source import resolve_source
            resolve_source(args.init)  # a mistyped --init fails now, not after the data is loaded
        if args.out is not None and args.out.exists() and not args.out.is_dir():
            raise LLMLabError(f"--out {args.out} is a file: give a directory for the run (it is created)")
        from llmlab.train.distributed import launched_by_torchrun
        from llmlab.train.run import default_run_dir, start
        if args.out is None and launched_by_torchrun():
            raise LLMLabError("under torchrun, give --out DIR: every process must write to the same run directory, "
                              "and a default name from the clock could differ between them")
        run_dir = args.out or default_run_dir(args.preset)
        state = start(config, run_dir)
    if os.environ.get("RANK", "0") != "0":
        return 130 if state.stop_reason == "interrupted" else 0     # rank 0 speaks for the run
    print(f"llmlab train: stopped ({state.stop_reason}) at step {state.step} after {state.elapsed_s:.0f}s; "
          f"best val loss {state.best_val:.4f}; run saved in {run_dir}", file=sys.stderr)
    if state.stop_reason == "interrupted":
        print(f"continue with: llmlab train --resume {run_dir}", file=sys.stderr)
        return 130
    return 0
