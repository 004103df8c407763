"""`evaluate`: run benchmark tasks on a model and report each score with its standard error.

    from llmlab.eval.harness import evaluate
    result = evaluate(model, tokenizer, "arc_easy,hellaswag", shots=0, limit=500)
    result["tasks"]["arc_easy"]    # {"acc": 0.52, "acc_norm": 0.44, "stderr": {...}, "n": 500, ...}

A task (llmlab.eval.tasks) says where its items come from and how each is rendered; this module
turns the items into requests, scores them all in one call to llmlab.eval.scoring (so every
request of a task shares batches and contexts), and reduces per-item outcomes to metrics:

    multiple_choice  one request per choice; acc / acc_norm / acc_per_token (llmlab.eval.metrics).
                     A task with a single choice (LAMBADA's last word) scores acc = the greedy
                     continuation is exactly the target, as lm-eval's LAMBADA does
    rolling          the log-likelihood of whole texts: bits per byte, token perplexity
    generate         greedy generation up to the stop strings, the answer extracted, exact match

Few-shot prompts take their examples from the task's few-shot split with a fixed seed, so two
runs (and two models) see the same prompts. With `train_data`, each item is also checked for
13-gram overlap with that corpus (the decontamination stage's test, in the other direction): a
high score on contaminated items measures memory, not skill.

Every result carries its configuration and a format version that `llmlab eval compare` checks.
"""

from __future__ import annotations

import math
import time

import torch

from llmlab.core.errors import LLMLabError
from llmlab.eval import metrics
from llmlab.eval.scoring import Request, generate_until, loglikelihoods, rolling_loglikelihoods

FORMAT_VERSION = 1


def _score_multiple_choice(model, tokenizer, docs, device, progress) -> tuple[dict, list[dict]]:
    requests, spans = [], []
    for doc in docs:
        contexts = doc.contexts()
        spans.append((len(requests), len(doc.choices)))
        requests += [Request(ctx, choice) for ctx, choice in zip(contexts, doc.choices)]
    results = loglikelihoods(model, tokenizer, requests, device=device, progress=progress)
    items = []
    for doc, (start, n) in zip(docs, spans):
        scored = results[start:start + n]
        lps, toks = [r.logprob for r in scored], [r.tokens for r in scored]
        if n == 1:   # a single target: right when it is exactly the greedy continuation
            outcome = {"acc": float(scored[0].is_greedy)}
        else:
            outcome = metrics.choice_metrics(lps, doc.choices, toks, doc.gold)
        items.append({"id": doc.id, **outcome, "logprobs": lps, "tokens": toks, "gold": doc.gold})
    names = ("acc",) if all(len(d.choices) == 1 for d in docs) else ("acc", "acc_norm", "acc_per_token")
    summary = {k: metrics.mean([it[k] for it in items]) for k in names}
    summary["stderr"] = {k: metrics.mean_stderr([it[k] for it in items]) for k in names}
    summary["chance"] = metrics.mean([1 / len(d.choices) if len(d.choices) > 1 else 0.0 for d in docs])
    if all(len(d.choices) == 1 for d in docs):   # LAMBADA also reports lm-eval's exp(-mean log-likelihood per item)
        summary["perplexity"] = math.exp(-metrics.mean([it["logprobs"][0] for it in items]))
    return summary, items


def _score_rolling(model, tokenizer, docs, device, progress) -> tuple[dict, list[dict]]:
    results = rolling_loglikelihoods(model, tokenizer, [d.text for d in docs], device=device, progress=progress)
    items = [{"id": d.id, "logprob": lp, "tokens": n, "bytes": len(d.text.encode("utf-8"))}
             for d, (lp, n) in zip(docs, results)]

    def bpb(sample: list[dict]) -> float:
        return -sum(it["logprob"] for it in sample) / math.log(2) / max(sum(it["bytes"] for it in sample), 1)

    summary = {"bits_per_byte": bpb(items),
               "perplexity": math.exp(-sum(it["logprob"] for it in items) / max(sum(it["tokens"] for it in items), 1)),
               "stderr": {"bits_per_byte": metrics.bootstrap_stderr(items, bpb)}, "chance": None}
    return summary, items


def _score_generate(model, tokenizer, task, docs, device) -> tuple[dict, list[dict]]:
    prompts = [d.contexts()[0] for d in docs]
    outputs = generate_until(model, tokenizer, prompts, [list(task.stop)] * len(docs),
                             [task.max_new_tokens] * len(docs), device=device)
    items = []
    for doc, output in zip(docs, outputs):
        answer = task.extract(output) if task.extract else output
        match = (metrics.exact_match(answer, doc.references) if task.answer_match == "normalized"
                 else float(answer.strip().lower() in {r.strip().lower() for r in doc.references}))
        items.append({"id": doc.id, "output": output, "answer": answer, "references": list(doc.references),
                      "exact_match": match})
    scores = [it["exact_match"] for it in items]
    return {"exact_match": metrics.mean(scores), "stderr": {"exact_match": metrics.mean_stderr(scores)},
            "chance": 0.0}, items


def _contamination(docs, items: list[dict], index) -> dict:
    """Flag each item (its rendered 0-shot prompt with the gold answer) that shares a 13-gram with the
    training data, so scores can be split into contaminated and clean items."""
    for doc, item in zip(docs, items):
        item["contaminated"] = index.contaminated(doc.answered())
    flagged = [it["id"] for it in items if it["contaminated"]]
    return {"items": len(docs), "contaminated": len(flagged), "ids": flagged[:50]}


def evaluate(model: torch.nn.Module, tokenizer, tasks, *, shots: int = 0, split: str | None = None,
             limit: int | None = None, seed: int = 1234, device: torch.device | str = "cpu", model_name: str = "",
             progress: bool = True, train_data: list[str] | None = None) -> dict:
    """Score `tasks` (Task objects, or names / suites as "arc_easy,core-lite") on the model.
    split: a split every task has (default: each task's `default_split`, the one lm-eval reports).
    limit: the first N items of each task. train_data: texts to check the items' 13-gram overlap with.
    Returns {"format_version", "model", "config", "tasks": {name: summary}, "items": {name: [...]},
    and "contamination" when train_data is given}."""
    from llmlab.eval.tasks import get_tasks, load_docs, with_shots

    if shots < 0:
        raise LLMLabError(f"shots {shots}: give 0 (zero-shot) or more examples")
    if limit is not None and limit < 1:
        raise LLMLabError(f"limit {limit}: give at least 1 item per task (or no limit)")
    tasks = get_tasks(tasks) if isinstance(tasks, str) else list(tasks)
    index = None
    if train_data is not None:
        from llmlab.data.curation.decontam import Decontaminator
        index = Decontaminator.from_texts(train_data)
    out = {"format_version": FORMAT_VERSION, "model": model_name, "tasks": {}, "items": {},
           "config": {"shots": shots, "split": split, "limit": limit, "seed": seed,
                      "tasks": [t.name for t in tasks], "dtype": str(next(model.parameters()).dtype)}}
    if index is not None:
        out["contamination"] = {}
    for task in tasks:
        t0 = time.perf_counter()
        task_split = split or task.default_split
        docs = load_docs(task, task_split, limit)
        if shots and task.fewshot_split is None:
            raise LLMLabError(f"task {task.name} has no split to draw few-shot examples from: use --shots 0")
        pool = load_docs(task, task.fewshot_split) if shots else []
        docs = [with_shots(task, d, shots, seed, pool) for d in docs]   # at 0 shots: the description only
        label = f"{task.name} ({len(docs)} items)" if progress else None
        if task.kind == "multiple_choice":
            summary, items = _score_multiple_choice(model, tokenizer, docs, device, label)
        elif task.kind == "rolling":
            summary, items = _score_rolling(model, tokenizer, docs, device, label)
        elif task.kind == "generate":
            summary, items = _score_generate(model, tokenizer, task, docs, device)
        else:
            raise LLMLabError(f"task {task.name} has kind {task.kind!r}; known: multiple_choice, rolling, generate")
        summary.update({"n": len(docs), "split": task_split, "shots": shots,
                        "seconds": round(time.perf_counter() - t0, 3)})
        out["tasks"][task.name], out["items"][task.name] = summary, items
        if index is not None:
            out["contamination"][task.name] = _contamination(load_docs(task, task_split, limit), items, index)
    return out


def check_result(result: dict, where: str) -> dict:
    """A result read back from a file: refuse other format versions with a clear message."""
    if not isinstance(result, dict) or "tasks" not in result:
        raise LLMLabError(f"{where} is not an llmlab evaluation result (write one with `llmlab eval run ... --out FILE`)")
    if result.get("format_version") != FORMAT_VERSION:
        raise LLMLabError(f"{where} has result format version {result.get('format_version')}; this llmlab reads "
                          f"version {FORMAT_VERSION}: rerun `llmlab eval run` to write it again")
    return result
