"""Starting and resuming a training run: the glue between configs, data, model and `Trainer`.

A run directory holds:
    config.json     the resolved RunConfig (+ format version, llmlab version, data facts)
    ckpt.pt         latest full checkpoint (resume from it)      best.pt  weights at the best val loss
    metrics.jsonl   one JSON object per logged step               loss.png train/val curves
    samples.txt     text sampled at the end (and every --sample-every steps)
    tensorboard/    event files, when tensorboard is installed
"""

from __future__ import annotations

import dataclasses
import random
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

import llmlab
from llmlab.core.device import pick_device, setup_backends
from llmlab.core.errors import LLMLabError
from llmlab.data.sources import prepare_dataset
from llmlab.data.tokens import TokenDataset
from llmlab.model.transformer import Transformer
from llmlab.train import sharded
from llmlab.train.checkpoint import CHECKPOINT, load_checkpoint
from llmlab.train.config import RunConfig
from llmlab.train.distributed import DistContext, check_same_everywhere, choose_parallel, init_distributed, shutdown
from llmlab.train.trainer import LoopState, Trainer, write_run_config


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_run_dir(preset: str) -> Path:
    return Path("runs") / f"{preset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def load_data(run: RunConfig, tokenizer=None) -> TokenDataset:
    return prepare_dataset(run.data.data, run.data.data_file, run.data.tokenizer, run.data.val_fraction,
                           tokenizer=tokenizer)


def build(run: RunConfig, resume_state: dict | None = None
          ) -> tuple[Transformer, TokenDataset, torch.device, dict | None, DistContext]:
    """Everything a run needs, in the order it is needed: (model, data, device, base). Model init
    happens right after seeding, so the same seed gives the same initial weights whatever else
    changed. With `run.init`, the weights, model config and tokenizer come from that pretrained
    model (llmlab.model.source) and `base` records which one (its content hash included).
    Under torchrun this process joins the process group first and takes its own device."""
    dist, device = init_distributed(pick_device(run.train.device))
    setup_backends(device)
    if run.train.threads:
        torch.set_num_threads(run.train.threads)
    base, pretrained, tokenizer = None, None, None
    if run.init:
        from llmlab.model.source import load_model, resolve_source

        source = resolve_source(run.init)
        pretrained, tokenizer, _ = load_model(source)
        base = source.as_dict()
        if resume_state is not None and resume_state.get("base", base)["sha256"] != base["sha256"]:
            raise LLMLabError(f"{run.init} has changed since this run started from it (sha256 differs); "
                              "restore the original to resume")
        if run.train.seq_len is None:  # the preset's window, not the pretrained model's whole context
            run.train = dataclasses.replace(run.train, seq_len=min(run.model.block_size, pretrained.config.block_size))
        run.model = pretrained.config
        if run.data.tokenizer == "char":
            run.data = dataclasses.replace(run.data, tokenizer=run.init)
    data = load_data(run, tokenizer)
    vocab = data.tokenizer.vocab_size
    if run.model.vocab_size < vocab:  # 0 means "take it from the tokenizer"; larger pads (e.g. 50304)
        if run.model.vocab_size:
            raise LLMLabError(f"--vocab-size {run.model.vocab_size} is smaller than the tokenizer's {vocab} ids")
        run.model = run.model.replace(vocab_size=vocab)
    if run.seq_len > run.model.block_size:
        raise LLMLabError(f"--seq-len {run.seq_len} exceeds the model's context of {run.model.block_size} tokens")
    if data.num_tokens("val") <= run.seq_len + 1:
        raise LLMLabError(f"the val split has {data.num_tokens('val')} tokens, not enough for sequences of "
                          f"{run.seq_len}; use a smaller --block-size / --seq-len or a larger --val-fraction")
    seed_everything(run.train.seed)
    if pretrained is not None:
        pretrained.config = run.model    # vocab_size may have been filled in above; the shapes agree
        model = pretrained.to(device)
    else:
        model = Transformer(run.model).to(device)
    check_same_everywhere({"config": run.to_dict(), "data": data.meta.get("source", {}),
                           "train_tokens": data.num_tokens("train")}, dist)
    return model, data, device, base, dist


def start(run: RunConfig, run_dir: Path) -> LoopState:
    if (run_dir / CHECKPOINT).exists() or (run_dir / "config.json").exists():
        raise LLMLabError(f"{run_dir} already holds a run: continue it with `llmlab train --resume {run_dir}` "
                          "or choose a new --out")
    model, data, device, base, dist = build(run)   # first: a bad data or model source leaves no directory behind
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_config(run_dir, run, _facts(run, model, data, base, dist))
    trainer = Trainer(run, model, data, data.tokenizer, run_dir, device, base=base, dist=dist)
    _announce(trainer, data, run_dir)
    try:
        return trainer.fit()
    finally:
        shutdown(dist)


RESUME_MAY_CHANGE = {"max_iters", "lr_decay_iters", "max_time", "eval_every", "ckpt_every", "log_every", "diag_every",
                     "sample_every", "early_stop_patience", "device", "compile", "threads", "tensorboard", "wandb",
                     "parallel"}


def check_resume_overrides(overrides: dict) -> None:
    """Only budget/logging fields may change on resume (pretraining and fine-tuning alike)."""
    refused = sorted(set(overrides) - RESUME_MAY_CHANGE)
    if refused:
        raise LLMLabError(f"cannot change {', '.join(refused)} when resuming (only {', '.join(sorted(RESUME_MAY_CHANGE))}); "
                          "start a new run with --out instead")


def latest_checkpoint(run_dir: Path) -> dict:
    """The newer of ckpt.pt (one process) and ckpt.dcp/ (torchrun): a run may have moved between
    them, 2 processes -> 1 -> 2. A sharded one is returned as its trainer state + "sharded_dir"."""
    shards = sharded.sharded_dir(run_dir)
    full = Path(run_dir) / CHECKPOINT
    if shards is None:
        return load_checkpoint(run_dir)
    state = {**sharded.load_trainer_state(shards), "sharded_dir": str(shards)}
    if full.is_file():
        whole = load_checkpoint(run_dir)
        if whole["loop"]["step"] > state["loop"]["step"]:
            return whole
    return state


def resume(run_dir: Path, overrides: dict) -> LoopState:
    """Continue a run from its checkpoint. Only budget/logging fields may change on resume; the
    rest must match, or the continuation would not be the same run."""
    state = latest_checkpoint(run_dir)
    if state["config"].get("kind") == "finetune":
        raise LLMLabError(f"{run_dir} is a fine-tuning run: continue it with `llmlab finetune --resume {run_dir}`")
    run = RunConfig.from_dict(state["config"])
    check_resume_overrides(overrides)
    old = run.train
    run.train = dataclasses.replace(run.train, **overrides)
    if "max_iters" in overrides and old.lr_decay_iters is None and old.max_iters and "lr_decay_iters" not in overrides \
            and run.train.max_iters != old.max_iters:
        # The cosine schedule's horizon is max_iters: changing it on resume would silently jump the
        # learning rate. Keep the original schedule (past its end the rate stays at min_lr).
        run.train = dataclasses.replace(run.train, lr_decay_iters=old.max_iters)
        print(f"note: keeping the learning-rate schedule of the original run (cosine over {old.max_iters} steps; "
              f"past it the rate stays at min_lr {run.train.min_lr:g}); pass --lr-decay-iters "
              f"{run.train.max_iters} to stretch the decay to the new budget instead", file=sys.stderr)
    model, data, device, base, dist = build(run, resume_state=state)
    if dist.is_main:
        write_run_config(run_dir, run, _facts(run, model, data, base, dist))
    trainer = Trainer(run, model, data, data.tokenizer, run_dir, device, resume_state=state, base=base, dist=dist)
    _announce(trainer, data, run_dir, resumed_at=trainer.state.step)
    try:
        return trainer.fit()
    finally:
        shutdown(dist)


def _facts(run: RunConfig, model: Transformer, data: TokenDataset, base: dict | None, dist: DistContext) -> dict:
    """What the run directory records besides the config, including how the processes split the
    batch: --batch-size is the global micro-batch, each rank takes batch_size / world_size rows."""
    t = run.train
    parallel = {"mode": choose_parallel(t.parallel, dist), "world_size": dist.world_size,
                "backend": dist.backend or None, "per_rank_batch": t.batch_size // dist.world_size,
                "grad_accum": t.grad_accum, "global_batch": t.batch_size * t.grad_accum,
                "global_batch_tokens": t.batch_size * t.grad_accum * run.seq_len}
    return {"llmlab_version": llmlab.__version__, "n_params": model.num_params(), "base": base, "parallel": parallel,
            "data_dir": str(data.directory), "train_tokens": data.num_tokens("train"),
            "val_tokens": data.num_tokens("val"), "data_source": data.meta.get("source", {})}


def _source_name(data: TokenDataset) -> str:
    source = data.meta.get("source", {})
    return str(source.get("name") or source.get("file") or data.directory)


def _announce(trainer: Trainer, data: TokenDataset, run_dir: Path, resumed_at: int | None = None) -> None:
    if not trainer.dist.is_main:
        return
    m = trainer.run.model
    what = f"resuming at step {resumed_at}" if resumed_at else "new run"
    print(f"llmlab train: {what} in {run_dir}\n"
          f"  model  {trainer.model.num_params() / 1e6:.2f}M params ({m.n_layer} layers, {m.n_head} heads, "
          f"{m.n_embd} wide, {m.position}/{m.norm}/{m.mlp}), context {m.block_size}, vocab {m.vocab_size}\n"
          f"  data   {data.num_tokens('train'):,} train / {data.num_tokens('val'):,} val tokens "
          f"({_source_name(data)})\n"
          f"  train  {trainer.cfg.batch_size * trainer.cfg.grad_accum * trainer.seq_len:,} tokens/step on "
          f"{trainer.device} ({trainer.amp_dtype}), {_processes(trainer)}"
          f"MFU peak: {trainer.peak / 1e12:.2f} TFLOP/s ({trainer.peak_source})", file=sys.stderr)


def _processes(trainer: Trainer) -> str:
    d = trainer.dist
    if not d.enabled:
        return ""
    return (f"{d.world_size} processes ({trainer.parallel}, {d.backend}), {trainer.cfg.batch_size // d.world_size} "
            "sequences per rank per micro-batch, ")
