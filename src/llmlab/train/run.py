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
from llmlab.train.checkpoint import CHECKPOINT, load_checkpoint
from llmlab.train.config import RunConfig
from llmlab.train.trainer import LoopState, Trainer, write_run_config


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_run_dir(preset: str) -> Path:
    return Path("runs") / f"{preset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def load_data(run: RunConfig) -> TokenDataset:
    return prepare_dataset(run.data.data, run.data.data_file, run.data.tokenizer, run.data.val_fraction)


def build(run: RunConfig, resume_state: dict | None = None) -> tuple[Transformer, TokenDataset, torch.device]:
    """Everything a run needs, in the order it is needed. Model init happens right after seeding,
    so the same seed gives the same initial weights whatever else changed."""
    device = pick_device(run.train.device)
    setup_backends(device)
    if run.train.threads:
        torch.set_num_threads(run.train.threads)
    data = load_data(run)
    vocab = data.tokenizer.vocab_size
    if run.model.vocab_size < vocab:  # 0 means "take it from the tokenizer"; larger pads (e.g. 50304)
        if run.model.vocab_size:
            raise LLMLabError(f"--vocab-size {run.model.vocab_size} is smaller than the tokenizer's {vocab} ids")
        run.model = run.model.replace(vocab_size=vocab)
    if data.num_tokens("val") <= run.model.block_size + 1:
        raise LLMLabError(f"the val split has {data.num_tokens('val')} tokens, not enough for --block-size "
                          f"{run.model.block_size}; use a smaller block size or a larger --val-fraction")
    seed_everything(run.train.seed)
    model = Transformer(run.model).to(device)
    return model, data, device


def start(run: RunConfig, run_dir: Path) -> LoopState:
    if (run_dir / CHECKPOINT).exists() or (run_dir / "config.json").exists():
        raise LLMLabError(f"{run_dir} already holds a run: continue it with `llmlab train --resume {run_dir}` "
                          "or choose a new --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    model, data, device = build(run)
    write_run_config(run_dir, run, _facts(model, data))
    trainer = Trainer(run, model, data, data.tokenizer, run_dir, device)
    _announce(trainer, data, run_dir)
    return trainer.fit()


def resume(run_dir: Path, overrides: dict) -> LoopState:
    """Continue a run from its checkpoint. Only budget/logging fields may change on resume; the
    rest must match, or the continuation would not be the same run."""
    state = load_checkpoint(run_dir)
    run = RunConfig.from_dict(state["config"])
    allowed = {"max_iters", "lr_decay_iters", "max_time", "eval_every", "ckpt_every", "log_every", "diag_every", "sample_every",
               "early_stop_patience", "device", "compile", "threads", "tensorboard", "wandb"}
    refused = sorted(set(overrides) - allowed)
    if refused:
        raise LLMLabError(f"cannot change {', '.join(refused)} when resuming (only {', '.join(sorted(allowed))}); "
                          "start a new run with --out instead")
    run.train = dataclasses.replace(run.train, **overrides)
    model, data, device = build(run, resume_state=state)
    write_run_config(run_dir, run, _facts(model, data))
    trainer = Trainer(run, model, data, data.tokenizer, run_dir, device, resume_state=state)
    _announce(trainer, data, run_dir, resumed_at=trainer.state.step)
    return trainer.fit()


def _facts(model: Transformer, data: TokenDataset) -> dict:
    return {"llmlab_version": llmlab.__version__, "n_params": model.num_params(),
            "data_dir": str(data.directory), "train_tokens": data.num_tokens("train"),
            "val_tokens": data.num_tokens("val"), "data_source": data.meta.get("source", {})}


def _source_name(data: TokenDataset) -> str:
    source = data.meta.get("source", {})
    return str(source.get("name") or source.get("file") or data.directory)


def _announce(trainer: Trainer, data: TokenDataset, run_dir: Path, resumed_at: int | None = None) -> None:
    m = trainer.run.model
    what = f"resuming at step {resumed_at}" if resumed_at else "new run"
    print(f"llmlab train: {what} in {run_dir}\n"
          f"  model  {trainer.model.num_params() / 1e6:.2f}M params ({m.n_layer} layers, {m.n_head} heads, "
          f"{m.n_embd} wide, {m.position}/{m.norm}/{m.mlp}), context {m.block_size}, vocab {m.vocab_size}\n"
          f"  data   {data.num_tokens('train'):,} train / {data.num_tokens('val'):,} val tokens "
          f"({_source_name(data)})\n"
          f"  train  {trainer.tokens_per_step:,} tokens/step on {trainer.device} ({trainer.amp_dtype}), "
          f"MFU peak: {trainer.peak / 1e12:.2f} TFLOP/s ({trainer.peak_source})", file=sys.stderr)
