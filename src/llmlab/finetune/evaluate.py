"""Did the fine-tune work, and what did it cost? Tuned vs base on held-out data.

    learned     the task's test split (or a user's JSONL): greedy replies to each prompt (the
                reference reply withheld), scored by the task (exact match, JSON validity, ...)
    forgotten   perplexity on general text (WikiText-2, else Python's docs) and the loss on the
                *other* built-in task's validation replies, base vs tuned: a fine-tune that
                raises them has overwritten some of what the base knew (Biderman et al. 2024
                measure LoRA's "forgets less" this way)

Replies are generated in padded batches through the engine (greedy decoding in a batch gives the
same tokens as one at a time).
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict

import torch
import torch.nn.functional as F

from llmlab.core.progress import progress
from llmlab.finetune.sft_data import Example, encode_example
from llmlab.infer.sampling import SamplingConfig

OTHER_TASK = {"facts": "extract-json", "extract-json": "facts"}


def normalise(text: str) -> str:
    return " ".join(text.strip().split())


def exact_match(prediction: str, reference: str) -> dict[str, float]:
    return {"exact_match": float(normalise(prediction) == normalise(reference))}


def split_prompt(example: Example) -> tuple[list[dict], str]:
    """(messages up to the last assistant turn, that turn's reference reply)."""
    messages = example.messages
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


def generate_replies(engine, examples: list[Example], max_new_tokens: int = 64, batch_size: int = 16,
                     desc: str = "generate") -> list[str]:
    """Greedy replies to each example's prompt (its last assistant turn withheld), in input order."""
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    prompts = [split_prompt(ex)[0] for ex in examples]
    replies: list[str] = []
    bar = progress(total=len(prompts), desc=desc, unit="ex")
    for i in range(0, len(prompts), batch_size):
        replies += [c.text for c in engine.generate_batch(prompts[i:i + batch_size], config)]
        bar.update(len(prompts[i:i + batch_size]))
    bar.close()
    return replies


def score_predictions(score, examples: list[Example], predictions: list[str],
                      kinds: list[str] | None = None) -> dict[str, float]:
    """Mean of each metric over the examples; with kinds, also per kind ("exact_match/reverse")."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for i, (example, prediction) in enumerate(zip(examples, predictions)):
        for metric, value in score(prediction, split_prompt(example)[1]).items():
            keys = [metric] + ([f"{metric}/{kinds[i]}"] if kinds else [])
            for key in keys:
                sums[key] += value
                counts[key] += 1
    return {k: sums[k] / counts[k] for k in sums}


@torch.no_grad()
def reply_loss(model: torch.nn.Module, tokenizer, examples: list[Example], device) -> float:
    """Mean NLL per target token of the examples' assistant replies."""
    total, count = 0.0, 0
    for example in examples:
        ids, mask = encode_example(tokenizer, example)
        ids_t = torch.tensor(ids, device=device)
        targets = torch.tensor(mask[1:], device=device, dtype=torch.bool)
        logits = model(ids_t[None, :-1])["logits"][0].float()
        total += float(F.cross_entropy(logits[targets], ids_t[1:][targets], reduction="sum"))
        count += int(targets.sum())
    return total / max(count, 1)


def general_text(path: str | None = None) -> tuple[str, str]:
    """(text, where from) for the forgetting perplexity: a file, else WikiText-2 valid when it is
    cached or downloadable, else Python's built-in docs (always there)."""
    from llmlab.core.errors import LLMLabError
    from llmlab.data.sources import load_text

    if path:
        return load_text(None, path)[0], path
    try:
        return load_text("wikitext-2")[0], "wikitext-2 valid"
    except LLMLabError:
        from llmlab.core.assets import pydocs_topics
        topics = pydocs_topics()
        return "\n\n".join(topics[k] for k in sorted(topics)), "Python docs (pydoc_data.topics)"


def forgetting_measures(model, tokenizer, device, text: str, ppl_tokens: int, other_examples: list[Example] | None,
                        ctx: int = 512) -> dict[str, float]:
    from llmlab.eval.perplexity import perplexity

    ids = tokenizer.encode(text)[:ppl_tokens]
    nbytes = len(tokenizer.decode(ids).encode("utf-8"))
    ctx = min(ctx, model.config.block_size)
    out = {"general_ppl": perplexity(model, ids, ctx, ctx, nbytes, device)["perplexity"]}
    if other_examples:
        out["other_task_loss"] = reply_loss(model, tokenizer, other_examples, device)
    return out


def compare(tuned: dict, base: dict) -> dict:
    """Per metric: base, tuned and the change (perplexity as a % change)."""
    rows = {}
    for key in tuned:
        if key in base:
            b, t = base[key], tuned[key]
            delta = (t / b - 1) * 100 if key.endswith("ppl") and b else t - b
            rows[key] = {"base": b, "tuned": t, "delta_pct" if key.endswith("ppl") else "delta": delta}
    return rows


def print_table(rows: dict, file=sys.stdout) -> None:
    def fmt(v: float, spec: str = "10.3f") -> str:   # no base to compare with: "-", not nan
        return f"{'-':>10}" if math.isnan(v) else f"{v:{spec}}"

    print(f"{'measure':<28} {'base':>10} {'tuned':>10} {'change':>10}", file=file)
    for key, r in rows.items():
        change = r.get("delta", r.get("delta_pct"))
        unit = "%" if "delta_pct" in r else ""
        print(f"{key:<28} {fmt(r['base'])} {fmt(r['tuned'])} {fmt(change, '+9.3f')}{unit}", file=file)


def evaluate_run(target: str, *, adapter: str | None = None, base: str | None = None, task: str | None = None,
                 task_size: int | None = None, task_seed: int = 0, data: str | None = None,
                 limit: int | None = None, predictions=None, max_new_tokens: int = 64, forgetting: bool = True,
                 general_file: str | None = None, ppl_tokens: int = 8192, device: str = "auto",
                 table: bool = True) -> dict:
    """Score `target` (+ adapter) and, when given, `base` on a task's test split or a JSONL file;
    write the target's predictions; measure forgetting. Returns the report `--json` prints."""
    from llmlab.core.io import atomic_open
    from llmlab.finetune.sft_data import read_examples
    from llmlab.infer import Engine

    if task is not None:
        from llmlab.finetune.tasks import build_task
        built = build_task(task, task_size, seed=task_seed)
        examples, score, kinds = built.test, built.score, getattr(built, "test_kinds", None)
    else:
        examples, score, kinds = read_examples(data), exact_match, None
        plain = [i for i, example in enumerate(examples, 1) if example.messages is None]
        if plain:
            from llmlab.core.errors import LLMLabError
            raise LLMLabError(f"{data}: example {plain[0]} is plain {{\"text\"}}, which has no reply to score; "
                              "eval needs chat {\"messages\": [...]} or Alpaca {instruction, output} examples")
    if limit:
        examples, kinds = examples[:limit], kinds[:limit] if kinds else None
    models = {"tuned": (target, adapter)} | ({"base": (base, None)} if base else {})
    text, text_source = general_text(general_file) if forgetting else ("", "")
    other = None
    if forgetting and task in OTHER_TASK:
        from llmlab.finetune.tasks import build_task
        other = build_task(OTHER_TASK[task], seed=0).validation[:100]
    report: dict = {"target": target, "adapter": adapter, "base": base, "task": task, "data": data,
                    "examples": len(examples)}
    for role, (spec, adapter_path) in models.items():
        engine = Engine.load(spec, device, adapter=adapter_path)
        replies = generate_replies(engine, examples, max_new_tokens, desc=f"{role} replies")
        if role == "tuned" and predictions is not None:
            with atomic_open(predictions, "w") as f:
                for reply in replies:
                    f.write(json.dumps({"prediction": reply}, ensure_ascii=False) + "\n")
        measures = score_predictions(score, examples, replies, kinds)
        if forgetting:
            measures.update(forgetting_measures(engine.model, engine.tokenizer, engine.device, text, ppl_tokens, other))
        report[f"{role}_scores"] = measures
        del engine
    if forgetting:
        report["general_text"] = text_source
    if base:
        report["compare"] = compare(report["tuned_scores"], report["base_scores"])
    if table:
        what = f"task {task} (test split)" if task else f"{data}"
        print(f"llmlab finetune eval: {target}{' + ' + adapter if adapter else ''} vs {base or '(no base)'} on {what}, "
              f"{len(examples)} examples" + (f"; general text: {text_source}" if forgetting else ""), file=sys.stderr)
        print_table(report.get("compare") or {k: {"base": float("nan"), "tuned": v, "delta": float("nan")}
                                              for k, v in report["tuned_scores"].items()})
    return report
