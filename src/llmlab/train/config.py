"""Typed configs for a training run, and the named presets.

A run is fully described by `RunConfig(model, data, train)`; `llmlab train --preset NAME` starts
from a preset and any field can be overridden by its flag (`--n-layer 6`, `--lr 3e-4`). The
resolved config is saved as `config.json` in the run directory and restored on `--resume`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from llmlab.core.config import ConfigError, check, check_fields, config_from_dict, config_to_dict
from llmlab.core.errors import LLMLabError
from llmlab.model.config import MODEL_PRESETS, ModelConfig


# The names `llmlab.core.device.pick_dtype` accepts (listed here so that checking a flag needs no torch).
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")


@dataclass
class DataConfig:
    data: str = field(default="shakespeare", metadata={"help": "data source: shakespeare, shakespeare-tiny, tinyshakespeare, wikitext-2, or a token dataset directory"})
    data_file: str | None = field(default=None, metadata={"help": "train on this local UTF-8 text file instead of a named source"})
    tokenizer: str = field(default="char", metadata={"help": "char, bpe:<vocab>[:<pattern>] (trained on the data), or a saved tokenizer path"})
    val_fraction: float = field(default=0.1, metadata={"help": "fraction of tokens held out (the tail) for validation"})

    def __post_init__(self) -> None:
        check_fields(self)
        check(self, "data", bool(self.data.strip()), "must name a source or a token dataset directory")
        check(self, "data_file", self.data_file is None or bool(self.data_file.strip()), "must be a file path")
        check(self, "val_fraction", 0 < self.val_fraction < 1, "must be between 0 and 1 (e.g. 0.1)")
        if self.tokenizer.startswith("bpe:"):
            parts = self.tokenizer.split(":")
            vocab = parts[1] if len(parts) > 1 else ""
            check(self, "tokenizer", vocab.isdigit() and int(vocab) > 256 and len(parts) <= 3,
                  "must read bpe:<vocab size>[:<pattern>] with a vocab size above the 256 bytes, e.g. bpe:4096:gpt4")


@dataclass
class TrainConfig:
    batch_size: int = field(default=32, metadata={"help": "sequences per micro-batch, over all processes under torchrun (each takes batch_size / N of them)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step (effective batch = batch_size * grad_accum)"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate"})
    min_lr: float = field(default=2e-4, metadata={"help": "learning rate at the end of the cosine decay"})
    warmup_iters: int = field(default=100, metadata={"help": "steps of linear warmup from 0 to lr"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (matrices only)"})
    decay_embeddings: bool = field(default=False, metadata={"help": "also apply weight decay to embedding tables"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    beta2: float = field(default=0.99, metadata={"help": "AdamW beta2"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm to this (0: off)"})
    max_iters: int | None = field(default=None, metadata={"help": "stop after this many optimizer steps"})
    lr_decay_iters: int | None = field(default=None, metadata={"help": "steps over which the cosine decays (None: max_iters, or --max-time)"})
    max_time: str | None = field(default=None, metadata={"help": "stop after this much wall time: 90s, 10m, 1h"})
    eval_every: int = field(default=250, metadata={"help": "evaluate train/val loss every N steps"})
    eval_iters: int = field(default=50, metadata={"help": "batches averaged per evaluation"})
    ckpt_every: int = field(default=500, metadata={"help": "save a checkpoint every N steps (also at the end and on Ctrl-C)"})
    early_stop_patience: int = field(default=0, metadata={"help": "stop when val loss has not improved for N evals (0: off)"})
    log_every: int = field(default=10, metadata={"help": "write a metrics.jsonl line every N steps"})
    diag_every: int = field(default=100, metadata={"help": "log per-group grad norms and update/weight ratios every N steps (0: off)"})
    spike_factor: float = field(default=3.0, metadata={"help": "flag a loss spike when a step's loss exceeds the recent mean by this many std devs"})
    sample_every: int = field(default=0, metadata={"help": "append a sample to samples.txt every N steps (0: only at the end)"})
    sample_tokens: int = field(default=200, metadata={"help": "tokens per sample in samples.txt"})
    seed: int = field(default=1337, metadata={"help": "random seed (model init, batches, dropout)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N, mps"})
    dtype: str = field(default="auto", metadata={"help": "autocast dtype: auto (bf16 on CUDA, float32 on CPU), float32, bfloat16, float16"})
    seq_len: int | None = field(default=None, metadata={"help": "tokens per training sequence (None: the model's block_size; with --init, the preset's)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    parallel: str = field(default="auto", metadata={"help": "data parallelism under torchrun: auto (ddp with several processes), none, ddp, fsdp (FSDP2, fully_shard per block)", "choices": ["auto", "none", "ddp", "fsdp"]})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch (0: torch's default)"})
    peak_tflops: float = field(default=0.0, metadata={"help": "hardware peak for MFU (0: known GPU table, or a measured matmul peak on CPU)"})
    tensorboard: bool = field(default=True, metadata={"help": "write TensorBoard events when tensorboard is installed"})
    wandb: bool = field(default=False, metadata={"help": "log to Weights & Biases (WANDB_MODE=offline works without a network)"})

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("batch_size", "grad_accum", "eval_every", "eval_iters", "ckpt_every", "log_every"):
            check(self, name, getattr(self, name) >= 1, "must be at least 1")
        for name in ("max_iters", "lr_decay_iters", "seq_len"):
            check(self, name, getattr(self, name) is None or getattr(self, name) >= 1, "must be at least 1")
        for name in ("warmup_iters", "early_stop_patience", "diag_every", "sample_every", "sample_tokens", "threads"):
            check(self, name, getattr(self, name) >= 0, "must be 0 or more")
        # lr 0 is allowed: a run that only evaluates (the early-stopping test uses it).
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "peak_tflops"):
            check(self, name, getattr(self, name) >= 0, "must be 0 or more")
        check(self, "min_lr", self.min_lr <= self.lr,
              f"must not exceed lr ({self.lr}): the cosine decays from lr down to min_lr; "
              f"try --min-lr {self.lr / 10:g}")
        for name in ("beta1", "beta2"):
            check(self, name, 0 <= getattr(self, name) < 1, "must be in [0, 1), e.g. 0.9 or 0.99")
        check(self, "spike_factor", self.spike_factor > 0, "must be positive")
        check(self, "dtype", self.dtype in DTYPE_NAMES, f"must be one of {', '.join(DTYPE_NAMES)}")
        check(self, "device", bool(self.device.strip()), "must be auto, cpu, cuda, cuda:N or mps")
        try:
            seconds = parse_duration(self.max_time)
        except LLMLabError as e:
            raise ConfigError(f"--max-time {self.max_time}: {e}") from None
        check(self, "max_time", seconds is None or seconds > 0, "must be a positive duration, e.g. 90s, 10m or 1h")


@dataclass
class RunConfig:
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    # Start from a pretrained model (any llmlab.model.source spec: smollm2, a .gguf, an HF or run
    # directory) instead of random weights; the model config and tokenizer then come from it.
    init: str | None = None

    @property
    def seq_len(self) -> int:
        """Tokens per training sequence."""
        return self.train.seq_len or self.model.block_size

    def to_dict(self) -> dict:
        return {"model": config_to_dict(self.model), "data": config_to_dict(self.data),
                "train": config_to_dict(self.train), "init": self.init}

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        return cls(config_from_dict(ModelConfig, d["model"]), config_from_dict(DataConfig, d["data"]),
                   config_from_dict(TrainConfig, d["train"]), d.get("init"))


def parse_duration(text: str | None) -> float | None:
    """'90s', '10m', '1.5h', '600' (seconds) -> seconds."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(text))
    if not m:
        raise LLMLabError(f"cannot read duration {text!r}: write e.g. 90s, 10m or 1h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def _preset(model: str, data: DataConfig | None = None, **train) -> RunConfig:
    return RunConfig(MODEL_PRESETS[model].replace(), data or DataConfig(), TrainConfig(**train))


PRESETS: dict[str, RunConfig] = {
    # The default. Sized to reach val loss <= 1.55 on tinyshakespeare in ~15 min on 2 CPU cores:
    # see docs/01-gpt-from-scratch.md for what each choice bought.
    "shakespeare-char": _preset("shakespeare-char", batch_size=32, lr=2e-3, min_lr=1e-4, warmup_iters=100,
                                max_iters=2000, eval_every=250, eval_iters=40, ckpt_every=500),
    # nanoGPT's documented CPU configuration (README "I only have a macbook"), for side-by-side runs.
    "nanogpt-cpu": _preset("nanogpt-cpu", batch_size=12, lr=1e-3, min_lr=1e-4, warmup_iters=100,
                           beta2=0.99, weight_decay=0.1, max_iters=2000, eval_every=250, eval_iters=20),
    # The same GPT on its own byte-level BPE tokenizer (vocabulary trained on the corpus first).
    "shakespeare-bpe": _preset("shakespeare-char", DataConfig(tokenizer="bpe:1024:gpt4"), batch_size=32,
                               lr=2e-3, min_lr=1e-4, max_iters=4000, eval_every=250, eval_iters=40),
    # GPT-2 small on a GPU (OpenWebText-scale runs need a token dataset directory via --data).
    "gpt2-124m": _preset("gpt2-124m", DataConfig(tokenizer="bpe:50257:gpt2"), batch_size=12, grad_accum=40,
                         lr=6e-4, min_lr=6e-5, warmup_iters=2000, beta2=0.95, max_iters=600000,
                         eval_every=1000, eval_iters=200, ckpt_every=1000, compile=True),
    # A small Llama (GQA) for token datasets from `llmlab data tokenize`.
    "small-llama": _preset("small-llama", batch_size=16, lr=1e-3, min_lr=1e-4, warmup_iters=200,
                           max_iters=5000, eval_every=250, eval_iters=40),
}
