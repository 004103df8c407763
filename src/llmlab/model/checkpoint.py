"""Checkpoint files: written atomically, loaded onto the CPU with errors a person can act on.

A training run's `ckpt.pt` holds everything needed to continue the run exactly (see
`llmlab.train.trainer`); `best.pt` and exported models hold at least "model" (state dict),
"model_config" (ModelConfig fields) and "tokenizer" (tokenizer dict). `load_run_model` rebuilds the
model + tokenizer pair from either.

Written to a temporary file and renamed over the old one, so a crash mid-write leaves the previous
checkpoint intact. Loaded onto the CPU first (so resuming never needs twice the GPU memory).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_save

CHECKPOINT = "ckpt.pt"
BEST = "best.pt"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    atomic_save(path, lambda f: torch.save({"format_version": FORMAT_VERSION, **state}, f))


def checkpoint_path(run_or_file: str | Path, name: str = CHECKPOINT) -> Path:
    path = Path(run_or_file)
    return path / name if path.is_dir() else path


def _first_sentence(e: BaseException) -> str:
    """'UnpicklingError: Weights only load failed' -- torch's first sentence; the rest of its message is
    advice about torch.load flags, which does not apply to a damaged file."""
    text = " ".join(str(e).split())
    cut = text.find(". ")
    text = text[:cut] if 0 < cut < 160 else text[:160]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load_checkpoint(run_or_file: str | Path, name: str = CHECKPOINT) -> dict[str, Any]:
    """Load `<run>/ckpt.pt` (or a checkpoint file) onto the CPU, with errors a person can act on."""
    path = checkpoint_path(run_or_file, name)
    if not path.is_file():
        if Path(run_or_file).is_dir():
            raise LLMLabError(f"{path} does not exist: {run_or_file} holds no checkpoint yet "
                              "(a run writes one every --ckpt-every steps, at the end and on Ctrl-C)")
        raise LLMLabError(f"{path} does not exist: pass a run directory or a checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError) as e:
        raise LLMLabError(f"{path} is not a readable checkpoint ({_first_sentence(e)}); "
                          "it may be truncated or from another program") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        version = state.get("format_version") if isinstance(state, dict) else None
        raise LLMLabError(f"{path} has checkpoint format {version!r}, this llmlab reads {FORMAT_VERSION}")
    return state


def load_model_state(model: torch.nn.Module, state: dict[str, Any], where: str = "the checkpoint") -> None:
    """Load state["model"] into `model`. A checkpoint with a "base" holds only the weights that were
    trained (the model was built from that base first); any other must hold every weight."""
    weights = state["model"]
    expected = model.state_dict()
    for name, tensor in weights.items():
        if name in expected and expected[name].shape != tensor.shape:
            raise LLMLabError(f"{where}: tensor {name} has shape {tuple(tensor.shape)}, the model built from its config "
                              f"expects {tuple(expected[name].shape)}; the file does not belong to this config")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or (missing and "base" not in state):
        raise LLMLabError(f"{where} does not fit its model config: missing {missing[:3]}, unexpected {unexpected[:3]}")


def load_run_model(run_or_file: str | Path, prefer_best: bool = True):
    """(Transformer, Tokenizer, state) from a run directory (best.pt, else ckpt.pt) or a checkpoint file.
    A checkpoint of a run that froze part of a base model names that base: it is loaded first (through
    llmlab.model.source), its content hash checked, and the trained weights put on top."""
    from llmlab.core.config import config_from_dict
    from llmlab.model.config import ModelConfig
    from llmlab.model.transformer import Transformer
    from llmlab.tokenizer import tokenizer_from_dict

    path = Path(run_or_file)
    name = BEST if prefer_best and path.is_dir() and (path / BEST).is_file() else CHECKPOINT
    state = load_checkpoint(path, name)
    where = str(checkpoint_path(path, name))
    try:
        if "base" in state:
            model = load_base(state["base"], where)
            if "adapter" in state:
                # A LoRA/QLoRA run: its adapter's format belongs to llmlab.finetune, which puts the
                # adapter layers on the base before their weights are loaded below.
                from llmlab.finetune.lora import rebuild_adapter
                rebuild_adapter(model, state["adapter"], where)
        else:
            try:
                config = config_from_dict(ModelConfig, state["model_config"])
            except LLMLabError as e:  # a ConfigError (also a ValueError) names the field; add the file
                raise LLMLabError(f"{where}: its model_config does not describe a valid model: {e}") from None
            model = Transformer(config)
        load_model_state(model, state, where)
        tokenizer = tokenizer_from_dict(state["tokenizer"])
    except KeyError as e:
        raise LLMLabError(f"{where} lacks {e}: it was not written by `llmlab train`") from None
    return model, tokenizer, state


def load_base(base: dict[str, Any], where: str):
    """The base model a checkpoint names ({"spec", "sha256", ...}), refusing one whose bytes changed."""
    from llmlab.model.source import load_model, resolve_source

    source = resolve_source(base["spec"])
    if base.get("sha256") and source.fingerprint() != base["sha256"]:
        raise LLMLabError(f"{where} was trained on top of {base['spec']} with sha256 {base['sha256'][:12]}..., but "
                          f"{source.path} now has other contents; restore that base model to load this run")
    return load_model(source)[0]
