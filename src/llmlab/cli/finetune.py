"""`llmlab finetune`: fine-tune a pretrained model (LoRA, QLoRA, DoRA, full), resume, evaluate.

    llmlab finetune --model smollm2 --method lora --task facts --out runs/ft-lora
    llmlab finetune --model smollm2 --method qlora --data my.jsonl --out runs/ft-qlora
    llmlab finetune --resume runs/ft-lora [--max-iters 400]
    llmlab finetune eval runs/ft-lora --task facts [--json]
    llmlab finetune eval runs/ft-lora --data test.jsonl --predictions preds.jsonl --json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmlab.core.config import _parse_bool, add_config_flags, apply_flags, given_flags
from llmlab.core.errors import LLMLabError
from llmlab.finetune.config import FinetuneConfig, FinetuneRun, LoRAConfig, describe_method_defaults, method_defaults
from llmlab.train.config import TrainConfig

# Like `llmlab train`, nothing here imports torch before the flags are checked.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Fine-tune a pretrained model on a built-in task (--task) or your JSONL (--data). Each --method starts "
        "from its own training defaults (LoRA's learning rate is 10x full fine-tuning's); any field below "
        "overrides them. `llmlab finetune eval RUN` compares the result with its base. The training defaults "
        f"below are TrainConfig's; each method starts from its own instead: {describe_method_defaults()}.")
    parser.add_argument("--model", default="smollm2",
                        help="the base: smollm2, a .gguf file, a Hugging Face directory or an llmlab run directory")
    parser.add_argument("--out", type=Path, help="run directory (default: runs/ft-<method>-<timestamp>)")
    parser.add_argument("--resume", type=Path, metavar="DIR", help="continue the fine-tune in DIR exactly")
    add_config_flags(parser, FinetuneConfig, "fine-tuning (FinetuneConfig)")
    add_config_flags(parser, LoRAConfig, "adapter (LoRAConfig; lora, qlora, dora)", prefix="lora")
    add_config_flags(parser, TrainConfig, "training loop (TrainConfig; defaults depend on --method)")
    sub = parser.add_subparsers(dest="command", metavar="eval")
    p = sub.add_parser("eval", help="tuned vs base: task scores on held-out data, and what was forgotten",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("target", help="a fine-tuning run directory, or any model (then give --base to compare)")
    p.add_argument("--adapter", help="a LoRA adapter (run or PEFT directory) to put on TARGET")
    p.add_argument("--base", help="the model to compare with (default: the run's base; 'none' to skip)")
    p.add_argument("--task", help="built-in task whose test split to score (default: the run's task)")
    p.add_argument("--task-size", type=int, help="the task's size knob (default: the run's)")
    p.add_argument("--data", help="JSONL of examples to score instead of a task: each example's last assistant "
                                  "reply is the reference; the model sees the messages before it")
    p.add_argument("--predictions", type=Path, help="write one {\"prediction\": ...} JSON line per example, in order")
    p.add_argument("--limit", type=int, help="score only the first N examples")
    p.add_argument("--max-new-tokens", type=int, default=64, help="reply length limit")
    p.add_argument("--forgetting", type=_parse_bool, default=True, metavar="true|false",
                   help="also measure general-text perplexity and the other built-in task's loss, base vs tuned")
    p.add_argument("--general-file", help="text file for the forgetting perplexity (default: WikiText-2 if cached, "
                                          "else Python's docs)")
    p.add_argument("--ppl-tokens", type=int, default=8192, help="tokens of general text to score")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    if args.command == "eval":
        return run_eval(args)
    if args.resume:
        if given_flags(FinetuneConfig, args) or given_flags(LoRAConfig, args, 'lora') or args.model != "smollm2":
            raise LLMLabError("the method, adapter and data are fixed by the run being resumed; only training "
                              "budgets and logging flags may be given with --resume")
        if args.out is not None:
            raise LLMLabError(f"--resume {args.resume} continues the run in that directory; --out {args.out} is "
                              "for a new run (leave it out)")
        if not args.resume.is_dir():
            raise LLMLabError(f"--resume {args.resume}: no such run directory (give the --out of an earlier "
                              "`llmlab finetune`)")
        from llmlab.finetune.run import resume
        state, run_dir = resume(args.resume, given_flags(TrainConfig, args)), args.resume
    else:
        finetune = apply_flags(FinetuneConfig(), args)
        for flag, path in (("--data", finetune.data), ("--val-data", finetune.val_data)):
            if path is not None and not Path(path).is_file():
                raise LLMLabError(f"{flag} {path}: no such file (JSONL, one example per line)")
        if finetune.task is None and finetune.data is None:
            raise LLMLabError("give the data to fine-tune on: --task extract-json|facts, or --data FILE.jsonl")
        if finetune.task is not None and finetune.data is not None:
            raise LLMLabError("give --task or --data, not both")
        from llmlab.model.config import ModelConfig
        from llmlab.model.source import resolve_source
        resolve_source(args.model)  # a mistyped --model fails now, before seconds of imports
        config = FinetuneRun(ModelConfig(vocab_size=1), apply_flags(method_defaults(finetune.method), args), finetune,
                             apply_flags(LoRAConfig(), args, 'lora'), args.model)
        if args.out is not None and args.out.exists() and not args.out.is_dir():
            raise LLMLabError(f"--out {args.out} is a file: give a directory for the run (it is created)")
        from datetime import datetime
        from llmlab.finetune.run import start
        run_dir = args.out or Path("runs") / f"ft-{finetune.method}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        state = start(config, run_dir)
    print(f"llmlab finetune: stopped ({state.stop_reason}) at step {state.step} after {state.elapsed_s:.0f}s; "
          f"best val loss {state.best_val:.4f}; run saved in {run_dir}", file=sys.stderr)
    if state.stop_reason == "interrupted":
        print(f"continue with: llmlab finetune --resume {run_dir}", file=sys.stderr)
        return 130
    print(f"next: llmlab finetune eval {run_dir}", file=sys.stderr)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from llmlab.model.source import resolve_source

    if args.data is not None and not Path(args.data).is_file():
        raise LLMLabError(f"--data {args.data}: no such file (JSONL, one example per line)")
    if args.task and args.data:
        raise LLMLabError("give --task (its test split) or --data (your JSONL), not both")
    if args.limit is not None and args.limit < 1:
        raise LLMLabError(f"--limit {args.limit}: must be at least 1")
    resolve_source(args.target)
    run_config = _run_config(Path(args.target))
    base_spec = args.base if args.base else (run_config["init"] if run_config else None)
    if base_spec == "none":
        base_spec = None
    if base_spec is not None:
        resolve_source(base_spec)
    task_name = args.task or (run_config["finetune"]["task"] if run_config and not args.data else None)
    if task_name is None and args.data is None:
        raise LLMLabError("say what to score: --task extract-json|facts or --data test.jsonl")
    from llmlab.finetune.evaluate import evaluate_run

    ft = run_config["finetune"] if run_config else {}
    report = evaluate_run(args.target, adapter=args.adapter, base=base_spec, task=task_name,
                          task_size=args.task_size or (ft.get("task_size") if task_name == ft.get("task") else None),
                          task_seed=ft.get("data_seed", 0), data=args.data, limit=args.limit,
                          predictions=args.predictions, max_new_tokens=args.max_new_tokens,
                          forgetting=args.forgetting, general_file=args.general_file, ppl_tokens=args.ppl_tokens,
                          device=args.device, table=not args.json)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


def _run_config(path: Path) -> dict | None:
    """The FinetuneRun dict of a fine-tuning run directory, or None for any other model."""
    config_file = path / "config.json"
    if path.is_dir() and config_file.is_file():
        from llmlab.core.io import read_json_object
        config = read_json_object(config_file, "it should be the config.json `llmlab finetune` wrote")
        if config.get("kind") == "finetune":
            return config
    return None
