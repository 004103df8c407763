"""Starting and resuming a fine-tune: base model -> adapter (or all weights) -> SFT data -> Trainer.

The loop is the pretraining loop (llmlab.train.trainer), unchanged: it trains whatever requires
grad, so LoRA, QLoRA, DoRA and full fine-tuning differ only in what `build` hands it. A run
directory is a training run directory (config.json, metrics.jsonl, loss.png, ckpt.pt, best.pt);
for the adapter methods its checkpoints hold only the adapter weights, the adapter record that
rebuilds its structure, and the base model's name and sha256.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from llmlab.core.device import pick_device, setup_backends
from llmlab.core.errors import LLMLabError
from llmlab.finetune.config import FinetuneConfig, FinetuneRun
from llmlab.finetune.lora import adapter_record, apply_lora, count_parameters
from llmlab.finetune.sft_data import SFTDataset, read_examples, split_examples
from llmlab.model.checkpoint import CHECKPOINT, load_checkpoint
from llmlab.model.surgery import HEAD
from llmlab.train.run import check_resume_overrides, seed_everything
from llmlab.train.trainer import LoopState, Trainer, write_run_config


def load_sft_data(cfg: FinetuneConfig, tokenizer, seq_len: int) -> SFTDataset:
    """The train/validation examples of a built-in task or a JSONL file, encoded and packed."""
    if cfg.task:
        from llmlab.finetune.tasks import build_task
        task = build_task(cfg.task, cfg.task_size, seed=cfg.data_seed)
        train, val = task.train, task.validation
    elif cfg.data:
        train, val = read_examples(cfg.data), None
        if cfg.val_data is None:
            train, val = split_examples(train, cfg.val_fraction, cfg.data_seed)
    else:
        raise LLMLabError("give the data to fine-tune on: --task extract-json|facts, or --data FILE.jsonl")
    if cfg.val_data is not None:
        val = read_examples(cfg.val_data)
    return SFTDataset(train, val, tokenizer, seq_len, pack=cfg.pack, overlong=cfg.overlong, seed=cfg.data_seed)


def build(run: FinetuneRun, resume_state: dict | None = None):
    """(model, data, device, base, artifact) for a fine-tune of `run.init`."""
    from llmlab.model.source import load_model, resolve_source

    device = pick_device(run.train.device)
    setup_backends(device)
    if run.train.threads:
        torch.set_num_threads(run.train.threads)
    source = resolve_source(run.init)
    model, tokenizer, _ = load_model(source)
    if tokenizer is None:
        raise LLMLabError(f"{source.path} has no tokenizer: fine-tuning renders the data with the model's own one")
    base = source.as_dict()
    if resume_state is not None and resume_state.get("base", base)["sha256"] != base["sha256"]:
        raise LLMLabError(f"{run.init} has changed since this run started from it (sha256 differs); "
                          "restore the original to resume")
    run.model = model.config
    if run.train.seq_len is None or run.train.seq_len > model.config.block_size:
        run.train = dataclasses.replace(run.train, seq_len=min(run.train.seq_len or 256, model.config.block_size))
    data = load_sft_data(run.finetune, tokenizer, run.seq_len)
    seed_everything(run.train.seed)   # the adapters' random A matrices
    artifact = {}
    if run.finetune.uses_lora:
        names = apply_lora(model, run.lora, run.finetune.method)
        artifact["adapter"] = adapter_record(run.lora, run.finetune.method, names)
    model.grad_checkpoint = run.finetune.grad_checkpoint
    return model.to(device), data, device, base, artifact


def start(run: FinetuneRun, run_dir: Path) -> LoopState:
    if (run_dir / CHECKPOINT).exists() or (run_dir / "config.json").exists():
        raise LLMLabError(f"{run_dir} already holds a run: continue it with `llmlab finetune --resume {run_dir}` "
                          "or choose a new --out")
    model, data, device, base, artifact = build(run)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run_dir, run, _facts(model, data, base))
    trainer = Trainer(run, model, data, data.tokenizer, run_dir, device, base=base, artifact=artifact)
    _announce(trainer, data, run_dir)
    return trainer.fit()


def resume(run_dir: Path, overrides: dict) -> LoopState:
    """Continue a fine-tune exactly; as for `llmlab train --resume`, only budgets and logging may change."""
    state = load_checkpoint(run_dir)
    if state["config"].get("kind") != "finetune":
        raise LLMLabError(f"{run_dir} is a pretraining run: continue it with `llmlab train --resume {run_dir}`")
    run = FinetuneRun.from_dict(state["config"])
    check_resume_overrides(overrides)
    if "max_iters" in overrides and run.train.lr_decay_iters is None and "lr_decay_iters" not in overrides:
        overrides = {**overrides, "lr_decay_iters": run.train.max_iters}   # keep the schedule (see train.run.resume)
    run.train = dataclasses.replace(run.train, **overrides)
    model, data, device, base, artifact = build(run, resume_state=state)
    write_run_config(run_dir, run, _facts(model, data, base))
    trainer = Trainer(run, model, data, data.tokenizer, run_dir, device, resume_state=state, base=base,
                      artifact=artifact)
    _announce(trainer, data, run_dir, resumed_at=trainer.state.step)
    return trainer.fit()


def _facts(model, data: SFTDataset, base: dict) -> dict:
    import llmlab
    trainable, total = count_parameters(model)
    return {"llmlab_version": llmlab.__version__, "base": base, "trainable_params": trainable,
            "total_params": total, "data": data.stats}


def base_bytes_per_param(model) -> float:
    """Bytes per weight of the frozen block linears (the output head, float in every method, not
    counted): 4 in float32, ~0.52 in NF4 with double quant."""
    nbytes, count = 0, 0
    for name, m in model.named_modules():
        if name == HEAD:
            continue
        if hasattr(m, "dequantize") and hasattr(m, "in_features"):
            nbytes += sum(b.numel() * b.element_size() for b in m.buffers(recurse=False))
            count += m.in_features * m.out_features
        elif isinstance(m, torch.nn.Linear) and not m.weight.requires_grad:
            nbytes += m.weight.numel() * m.weight.element_size()
            count += m.weight.numel()
    return nbytes / max(count, 1)


def _announce(trainer: Trainer, data: SFTDataset, run_dir: Path, resumed_at: int | None = None) -> None:
    run, model = trainer.run, trainer.model
    trainable, total = count_parameters(model)
    what = f"resuming at step {resumed_at}" if resumed_at else "new run"
    ft = run.finetune
    adapter = f"r={run.lora.r}, alpha={run.lora.alpha:g}, targets {run.lora.targets}" if ft.uses_lora else "all weights"
    lines = [f"llmlab finetune: {what} in {run_dir}",
             f"  base    {run.init} ({total / 1e6:.1f}M params)",
             f"  method  {ft.method} ({adapter}): {trainable:,} trainable parameters, "
             f"{100 * trainable / total:.3f}% of the model"]
    if ft.uses_lora:
        lines.append(f"  frozen  {base_bytes_per_param(model):.3f} bytes per weight in the frozen block linear layers")
    lines += [f"  data    {line}" for line in data.summary().splitlines()]
    lines.append(f"  train   batch {trainer.cfg.batch_size} x {trainer.seq_len} tokens "
                 f"({'packed' if ft.pack else 'length-bucketed'}), lr {trainer.cfg.lr:g}, on {trainer.device} "
                 f"({trainer.amp_dtype})")
    print("\n".join(lines), file=sys.stderr)

