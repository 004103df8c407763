"""The scaling sweep: several model sizes at a fixed token budget per parameter, a power law, a check.

`--sweep model.n_layer=2,4,6` (or a width, model.n_embd=64,96,128) adds one cached stage per size,
`sweep-n_layer=2`, ..., each pretraining that size on the same token dataset for
tokens_per_param x N tokens (Chinchilla's ~20 by default; N counts non-embedding parameters, as
Kaplan et al. 2020 fit them, unless sweep.params = "total"), then measuring its loss on the
held-out split (nats per token, our tokenizer, the same text for every size). The `sweep` stage
fits L = a * N^-alpha and L = a * C^-alpha with C = 6 N D (llmlab.e2e.scaling), predicts the loss
of the next size (scaling.next_size: 2,4,6 -> 8) *before* it is trained, and the extra point
stage `sweep-n_layer=8` trains it; OUT/sweep/scaling.png and scaling.json hold the result, and
the report a section with the exponents, the prediction and its error.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

from llmlab.core.config import config_to_dict
from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_write_json
from llmlab.e2e.pipeline import Stage, StageContext, without_runtime


def parse_sweep(spec: str) -> tuple[str, list[int]]:
    """'model.n_layer=2,4,6' (or 'n_layer=2,4,6') -> ('n_layer', [2, 4, 6]): a whole-number model
    setting and two or more increasing values."""
    from llmlab.model.config import ModelConfig

    key, sep, values = spec.partition("=")
    key = key.strip()
    name = key.split(".", 1)[1] if key.startswith("model.") else key
    ints = [f.name for f in dataclasses.fields(ModelConfig)
            if typing.get_type_hints(ModelConfig)[f.name] in (int, int | None) and f.name != "vocab_size"]
    if not sep or name not in ints:
        raise LLMLabError(f"--sweep {spec!r}: write model.SETTING=V1,V2,V3 with a whole-number model setting "
                          f"({', '.join(ints)}), e.g. --sweep model.n_layer=2,4,6")
    try:
        numbers = [int(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise LLMLabError(f"--sweep {spec!r}: the values must be whole numbers, e.g. 2,4,6") from None
    if len(numbers) < 2 or any(b <= a for a, b in zip(numbers, numbers[1:])):
        raise LLMLabError(f"--sweep {spec!r}: give two or more increasing values (three or more for a fit worth "
                          "reading), e.g. 2,4,6")
    return name, numbers


def point_name(name: str, value: int) -> str:
    return f"sweep-{name}={value}"


def sweep_plan(recipe) -> tuple[str, list[int], int | None]:
    """(setting, measured values, the predicted next value or None)."""
    from llmlab.e2e.scaling import next_size

    name, values = parse_sweep(recipe.sweep.spec)
    return name, values, next_size(values) if recipe.sweep.predict else None


def sweep_model(recipe, name: str, value: int):
    """The ModelConfig of one sweep size: the recipe's model, sweep.model's settings, then the swept one."""
    from llmlab.e2e.recipe import parse_value, _field_type
    from llmlab.model.config import ModelConfig

    shared = {}
    for item in recipe.sweep.model:
        key, _, text = item.partition("=")
        shared[key.strip()] = parse_value(text.strip(), _field_type(ModelConfig, key.strip()), f"sweep.model {item}")
    try:
        return recipe.model.replace(**{**shared, name: value})
    except LLMLabError as e:
        raise LLMLabError(f"sweep size {name}={value}: {e}") from None


def _size(recipe, name: str, value: int, vocab_size: int) -> tuple[object, int, int]:
    """(ModelConfig, total parameters, non-embedding parameters) of one sweep size, counted on the
    meta device (no memory for weights)."""
    import torch

    from llmlab.model.transformer import Transformer

    config = sweep_model(recipe, name, value)
    config = config.replace(vocab_size=config.vocab_size or vocab_size)
    with torch.device("meta"):
        model = Transformer(config)
    return config, model.num_params(), model.num_params(non_embedding=True)


def plan_steps(recipe, n_params: int) -> tuple[int, int]:
    """(steps, tokens per step) for tokens_per_param x n_params tokens, within [min_steps, max_steps]."""
    p, s = recipe.pretrain, recipe.sweep
    per_step = p.batch_size * p.grad_accum * (p.seq_len or recipe.model.block_size)
    steps = max(s.min_steps, math.ceil(s.tokens_per_param * n_params / per_step))
    return (min(steps, s.max_steps) if s.max_steps else steps), per_step


def heldout_loss(model, tokenizer, texts: dict[str, str], ctx: int) -> dict:
    """Mean loss per token over every domain's held-out text (and bits per byte)."""
    from llmlab.eval.perplexity import perplexity

    nll = tokens = n_bytes = 0.0
    for text in texts.values():
        ids = tokenizer.encode(text)
        if len(ids) < 2:
            continue
        r = perplexity(model, ids, ctx=min(ctx, model.config.block_size))
        nll, tokens, n_bytes = nll + r["nll"] * r["tokens"], tokens + r["tokens"], n_bytes + len(text.encode())
    if not tokens:
        raise LLMLabError("the held-out split holds no text to measure the sweep's loss on; raise data.heldout_fraction")
    return {"loss": nll / tokens, "bits_per_byte": nll / math.log(2) / n_bytes, "heldout_tokens": int(tokens)}


# Pretraining fields each sweep point sets for itself (its step budget and the schedule around it):
# left out of the point's key, so `--set pretrain.max_steps=...` does not retrain every size.
POINT_OVERRIDES = ("max_iters", "lr_decay_iters", "max_time", "eval_every", "ckpt_every")


def _run_point(name: str, value: int):
    def run(ctx: StageContext) -> dict:
        from llmlab.e2e.indomain import heldout_texts
        from llmlab.e2e.stages import heldout_documents, train_model
        from llmlab.model.checkpoint import load_run_model

        recipe = ctx.recipe
        config, total, non_embedding = _size(recipe, name, value, ctx.facts["tokenizer"]["vocab_size"])
        counted = non_embedding if recipe.sweep.params == "non-embedding" else total
        steps, per_step = plan_steps(recipe, counted)
        every = max(1, steps // 4)
        train = dataclasses.replace(recipe.pretrain, max_iters=steps, lr_decay_iters=None, max_time=None,
                                    eval_every=every, ckpt_every=every, warmup_iters=min(recipe.pretrain.warmup_iters,
                                                                                         steps // 10))
        tok = ctx.stage_dir("tokenizer")
        state = train_model(ctx.dir / "run", config, train, tok / "data", tok / "tokenizer", ctx.name, ctx.out)
        model, tokenizer, _ = load_run_model(ctx.dir / "run", prefer_best=False)
        texts = heldout_texts(heldout_documents(ctx.out), recipe.eval.bpb_bytes)
        measured = heldout_loss(model.eval(), tokenizer, texts, config.block_size)
        tokens = state.step * per_step
        return {"label": f"{name}={value}", "value": value, "parameters": counted, "total_parameters": total,
                "non_embedding_parameters": non_embedding, "steps": state.step, "tokens": tokens,
                "flops": 6.0 * counted * tokens, **measured}
    return run


def _run_summary(name: str, values: list[int], predicted_value: int | None):
    def run(ctx: StageContext) -> dict:
        from llmlab.e2e.scaling import fit_power_law, plot_scaling, scaling_summary

        points = [ctx.facts[point_name(name, v)] for v in values]
        fits = {"parameters": fit_power_law([p["parameters"] for p in points], [p["loss"] for p in points], "parameters"),
                "flops": fit_power_law([p["flops"] for p in points], [p["loss"] for p in points], "flops")}
        predicted = measured = None
        if predicted_value is not None:
            measured = ctx.facts[point_name(name, predicted_value)]
            predicted = {"label": measured["label"], "parameters": measured["parameters"], "flops": measured["flops"],
                         "measured_loss": measured["loss"]}
        plot = plot_scaling(points, fits, predicted, ctx.dir / "scaling.png")
        summary = scaling_summary(points, fits, predicted, measured)
        result = {"setting": name, "values": values, "points": points, "predicted_point": measured,
                  "summary": summary, "plot": str(Path(plot).relative_to(ctx.out))}
        atomic_write_json(ctx.dir / "scaling.json", result)
        return result
    return run


def sweep_stages(recipe) -> list[Stage]:
    """The sweep's stages (none without sweep.spec): one per size, the predicted size, the fit."""
    if not recipe.sweep.spec:
        return []
    name, values, predicted = sweep_plan(recipe)

    def settings(value: int):
        def material(r) -> dict:
            return {"model": without_runtime(config_to_dict(sweep_model(r, name, value))),
                    "train": {k: v for k, v in without_runtime(config_to_dict(r.pretrain)).items()
                              if k not in POINT_OVERRIDES},
                    "sweep": without_runtime({k: v for k, v in config_to_dict(r.sweep).items() if k != "spec"}),
                    "heldout_bytes": r.eval.bpb_bytes}
        return material

    every = values + ([predicted] if predicted is not None else [])
    stages = [Stage(point_name(name, v), ("tokenizer", "curate"), settings(v), _run_point(name, v), code="sweep-point")
              for v in every]
    stages.append(Stage("sweep", tuple(point_name(name, v) for v in every), lambda r: {"setting": name, "values": values,
                                                                                       "predict": predicted},
                        _run_summary(name, values, predicted)))
    return stages
