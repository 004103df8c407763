"""The eval stage: base, tuned and a reference model on one harness, plus bits per byte and samples.

Every model answers the same items: the recipe's benchmark tasks (llmlab.eval.harness.evaluate,
the first `eval.limit` items each, `eval.shots` shots) and the in-domain tasks built here from the
held-out split (llmlab.e2e.indomain; all `eval.indomain_items` of each, 0-shot). Each also gets
held-out bits per byte per domain (llmlab.eval.perplexity, windows of our model's context, no
overlap: the reference model sees the same windows), and base and tuned a few greedy samples through
llmlab.infer.Engine. The base model's run also reports contamination: how many eval items share
a 13-gram with the training corpus (evaluate(train_data=...)).

The reference model (SmolLM2-135M-Instruct by default) does not depend on anything we trained:
its result is cached in OUT/cache/reference-<key>.json under a key of its own (the model's
sha256, the tasks, the limit, the in-domain items and held-out texts), so changing the model
or the pretraining reruns our evaluations but not its.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_write_json, read_json_object
from llmlab.e2e.pipeline import CODE_VERSION, StageContext, without_runtime

BASE_PROMPTS = ("ROMEO:\n", "def read_config(path):\n", "The \"while\" statement\n", "KING HENRY V:\nOnce more")


def settings(recipe) -> dict:
    from llmlab.core.config import config_to_dict
    return {"eval": without_runtime(config_to_dict(recipe.eval)), "block_size": recipe.model.block_size}


def _log(message: str) -> None:
    print(f"llmlab e2e: {message}", file=sys.stderr, flush=True)


def bits_per_byte(model, tokenizer, texts: dict[str, str], ctx: int, device) -> dict[str, dict]:
    """Per domain: bits per byte of the held-out text, in non-overlapping windows of `ctx` tokens."""
    from llmlab.eval.perplexity import perplexity

    out = {}
    for domain, text in texts.items():
        ids = tokenizer.encode(text)
        if len(ids) < 2:
            continue
        n_bytes = len(text.encode("utf-8"))
        result = perplexity(model, ids, ctx=min(ctx, model.config.block_size), text_bytes=n_bytes, device=device,
                            progress_label=f"bits per byte ({domain})")
        out[domain] = {"bits_per_byte": result["bits_per_byte"], "tokens": result["tokens"], "bytes": n_bytes,
                       "perplexity": result["perplexity"]}
    return out


def samples(model, tokenizer, device, name: str, chat: list[list[dict]] | None, n: int, max_new_tokens: int) -> list[dict]:
    """Greedy continuations of the fixed base prompts, and (tuned) replies to held-out chat prompts."""
    from llmlab.infer.engine import Engine
    from llmlab.infer.sampling import SamplingConfig

    engine = Engine(model, tokenizer, device, name=name)
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    out = [{"prompt": p, "completion": engine.generate(p, config, raw=True, overflow="truncate").text}
           for p in BASE_PROMPTS[:n]]
    for messages in (chat or [])[:n]:
        prompt = messages[:-1]
        out.append({"prompt": prompt[-1]["content"], "chat": True, "expected": messages[-1]["content"],
                    "completion": engine.generate(prompt, config, overflow="truncate").text})
    return out


def _evaluate(model, tokenizer, tasks: tuple[list, list], recipe, device, name: str, train_data) -> dict:
    """One result for the benchmarks (eval.limit items each, eval.shots) and the in-domain tasks
    (all their eval.indomain_items, 0-shot: they have no few-shot split), merged."""
    from llmlab.eval.harness import evaluate

    e = recipe.eval
    benchmarks, indomain = tasks
    merged: dict | None = None
    for group, shots, limit in ((benchmarks, e.shots, e.limit or None), (indomain, 0, None)):
        if not group:
            continue
        result = evaluate(model, tokenizer, group, shots=shots, limit=limit, seed=e.seed, device=device,
                          model_name=name, progress=True, train_data=train_data)
        if merged is None:
            merged = result
            continue
        for part in ("tasks", "items", "contamination"):
            if part in result:
                merged.setdefault(part, {}).update(result[part])
        merged["config"]["tasks"] += result["config"]["tasks"]
    return merged or {"tasks": {}, "items": {}}


def _hash_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def reference_key(recipe, source, indomain_dir: Path, texts: dict[str, str]) -> str:
    e = recipe.eval
    material = {"code": CODE_VERSION["reference"], "model": source.as_dict(), "tasks": e.tasks, "limit": e.limit,
                "shots": e.shots, "seed": e.seed, "indomain": _hash_files(list(indomain_dir.glob("*.jsonl"))),
                "texts": hashlib.sha256(json.dumps(texts, sort_keys=True).encode()).hexdigest(),
                "block_size": recipe.model.block_size}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def summarize(result: dict) -> dict:
    """The numbers the report table needs, per task: acc, acc_norm, their stderr, n, chance."""
    table = {}
    for task, s in result.get("tasks", {}).items():
        table[task] = {k: s.get(k) for k in ("acc", "acc_norm", "bits_per_byte", "exact_match", "n", "chance")
                       if s.get(k) is not None}
        table[task]["stderr"] = {k: v for k, v in s.get("stderr", {}).items() if v is not None}
    return table


def run_eval(ctx: StageContext) -> dict:
    from llmlab.core.device import pick_device
    from llmlab.e2e.indomain import heldout_texts, load_tasks, write_items
    from llmlab.e2e.stages import corpus_documents, heldout_documents
    from llmlab.model.source import load_model, resolve_source

    recipe, d, e = ctx.recipe, ctx.dir, ctx.recipe.eval
    heldout = heldout_documents(ctx.out)
    indomain_dir = d / "indomain"
    counts = write_items(indomain_dir, heldout, e.indomain_items, e.context_lines, e.seed)
    texts = heldout_texts(heldout, e.bpb_bytes)
    benchmarks = []
    if e.tasks.strip():
        from llmlab.eval.tasks import get_tasks
        benchmarks = get_tasks(e.tasks)
    tasks = (benchmarks, load_tasks(indomain_dir))
    device = pick_device(e.device)
    ctx_len = recipe.model.block_size
    chat = [r["messages"] for r in _read_rows(ctx.stage_dir("sft") / "chat_val.jsonl")]
    train_data = [doc["text"] for doc in corpus_documents(ctx.out)] if e.contamination else None
    results: dict[str, dict] = {}
    for label, run_dir in (("base", ctx.stage_dir("pretrain") / "run"), ("tuned", ctx.stage_dir("sft") / "run")):
        path = d / f"{label}.json"
        if path.is_file():          # resumed: this model was evaluated before the stop
            results[label] = read_json_object(path, "delete it to evaluate again")
            continue
        _log(f"eval: {label} model ({run_dir})")
        model, tokenizer, _ = load_model(run_dir)
        model = model.to(device).eval()
        result = _evaluate(model, tokenizer, tasks, recipe, device, label, train_data if label == "base" else None)
        result["bits_per_byte"] = bits_per_byte(model, tokenizer, texts, ctx_len, device)
        if e.samples:
            result["samples"] = samples(model, tokenizer, device, label, chat if label == "tuned" else None,
                                        e.samples, e.sample_tokens)
        atomic_write_json(path, result)
        results[label] = result
    reference = None
    if e.reference.strip():
        try:
            source = resolve_source(e.reference)
        except LLMLabError as err:
            raise LLMLabError(f"eval.reference {e.reference!r}: {err} (or --set eval.reference= to skip it)") from None
        key = reference_key(recipe, source, indomain_dir, texts)
        cached = ctx.out / "cache" / f"reference-{key[:16]}.json"
        if cached.is_file():
            _log(f"eval: reference {e.reference} cached ({cached.name})")
            results["reference"] = read_json_object(cached, "delete it to evaluate the reference again")
        else:
            _log(f"eval: reference model {e.reference}")
            model, tokenizer, _ = load_model(source)
            model = model.to(device).eval()
            result = _evaluate(model, tokenizer, tasks, recipe, device, e.reference, None)
            result["bits_per_byte"] = bits_per_byte(model, tokenizer, texts, ctx_len, device)
            result["key"] = key
            atomic_write_json(cached, result)
            results["reference"] = result
        reference = {"spec": e.reference, "cache": str(cached.relative_to(ctx.out))}
    contamination = results["base"].get("contamination", {})
    return {"indomain_items": counts, "heldout_bytes": {k: len(v.encode()) for k, v in texts.items()},
            "tasks": [t.name for group in tasks for t in group], "reference": reference,
            "table": {label: summarize(r) for label, r in results.items()},
            "bits_per_byte": {label: r.get("bits_per_byte", {}) for label, r in results.items()},
            "contamination": {t: {"items": c.get("items"), "contaminated": c.get("contaminated")}
                              for t, c in contamination.items()}}


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
