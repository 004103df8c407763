"""Typed configs for fine-tuning: what adapter (LoRAConfig), on what data and how (FinetuneConfig).

A fine-tuning run is `FinetuneRun(model, train, finetune, init)`: `init` names the base model (any
llmlab.model.source spec), `train` is the pretraining loop's own TrainConfig (budgets, schedule,
logging: the same flags as `llmlab train`), and the method presets below set the learning rate each
method wants. The resolved config is saved as `config.json` in the run directory, and in every
checkpoint, so `--resume` and later loads rebuild exactly the same adapter.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from llmlab.core.config import check, check_fields, config_from_dict, config_to_dict
from llmlab.model.config import ModelConfig
from llmlab.train.config import TrainConfig

METHODS = ("lora", "qlora", "dora", "full")


@dataclass
class LoRAConfig:
    r: int = field(default=16, metadata={"help": "LoRA rank: the inner size of the update B @ A"})
    alpha: float = field(default=32.0, metadata={"help": "LoRA alpha: the update is scaled by alpha / r (alpha / sqrt(r) with --lora-rslora)"})
    # 0 (PEFT's default too): each adapter with dropout keeps its own dropped-out copy of its input
    # for backward, ~0.8 GB more for SmolLM2 at 8 x 140 tokens with all-linear adapters.
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input (training only)"})
    targets: str = field(default="all-linear", metadata={"help": "comma-separated layer patterns to adapt: all-linear, or names/suffixes/globs like attn.wq,attn.wv"})
    rslora: bool = field(default=False, metadata={"help": "rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski 2023)"})
    nf4_block: int = field(default=64, metadata={"help": "QLoRA: weights per NF4 block (one absmax each)"})
    double_quant: bool = field(default=True, metadata={"help": "QLoRA: quantize the NF4 absmax constants too (Dettmers et al. 2023)"})

    def __post_init__(self) -> None:
        check_fields(self)
        check(self, "r", self.r >= 1, "must be at least 1 (typical: 4 to 64)")
        check(self, "alpha", self.alpha > 0, "must be positive (typical: r or 2r)")
        check(self, "dropout", 0 <= self.dropout < 1, "must be in [0, 1)")
        check(self, "targets", bool(self.target_list), "must name at least one layer pattern, e.g. all-linear")
        check(self, "nf4_block", self.nf4_block >= 2 and self.nf4_block % 2 == 0, "must be an even number, e.g. 64")

    @property
    def target_list(self) -> list[str]:
        return [t.strip() for t in self.targets.split(",") if t.strip()]


@dataclass
class FinetuneConfig:
    method: str = field(default="lora", metadata={"help": "lora, qlora (NF4 frozen base + LoRA), dora (weight-decomposed LoRA) or full (every weight)"})
    task: str | None = field(default=None, metadata={"help": "built-in task (made by code, offline): extract-json or facts"})
    task_size: int | None = field(default=None, metadata={"help": "size knob of the built-in task (facts: number of people; extract-json: train examples)"})
    data: str | None = field(default=None, metadata={"help": "JSONL training data: chat {\"messages\": [...]}, Alpaca {instruction, input, output} or {\"text\": ...}"})
    val_data: str | None = field(default=None, metadata={"help": "JSONL validation data (default: the task's validation split, or --val-fraction of --data)"})
    val_fraction: float = field(default=0.1, metadata={"help": "share of --data held out for validation when no --val-data is given"})
    pack: bool = field(default=True, metadata={"help": "pack several examples per sequence with attention kept inside each (--pack false: length-bucketed padded batches)"})
    overlong: str = field(default="skip", metadata={"help": "examples longer than --seq-len: skip or truncate (the count is printed either way)"})
    grad_checkpoint: bool = field(default=False, metadata={"help": "recompute each block's activations in backward: less memory, ~1/3 more compute"})
    data_seed: int = field(default=0, metadata={"help": "seed of the task generator, the validation split and the packing order"})

    def __post_init__(self) -> None:
        check_fields(self)
        check(self, "method", self.method in METHODS, f"must be one of {', '.join(METHODS)}")
        check(self, "overlong", self.overlong in ("skip", "truncate"), "must be skip or truncate")
        check(self, "val_fraction", 0 < self.val_fraction < 1, "must be between 0 and 1 (e.g. 0.1)")
        check(self, "task_size", self.task_size is None or self.task_size >= 1, "must be at least 1")

    @property
    def uses_lora(self) -> bool:
        return self.method != "full"


@dataclass
class FinetuneRun:
    """What `Trainer` needs of a run (train, seq_len, to_dict), for a fine-tune of `init`."""

    model: ModelConfig
    train: TrainConfig
    finetune: FinetuneConfig
    lora: LoRAConfig
    init: str = "smollm2"

    @property
    def seq_len(self) -> int:
        return self.train.seq_len or self.model.block_size

    def to_dict(self) -> dict:
        return {"kind": "finetune", "model": config_to_dict(self.model), "train": config_to_dict(self.train),
                "finetune": config_to_dict(self.finetune), "lora": config_to_dict(self.lora), "init": self.init}

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneRun":
        return cls(config_from_dict(ModelConfig, d["model"]), config_from_dict(TrainConfig, d["train"]),
                   config_from_dict(FinetuneConfig, d["finetune"]), config_from_dict(LoRAConfig, d["lora"]), d["init"])


def _train(**overrides) -> TrainConfig:
    # Shared by every method: short runs (fine-tuning needs hundreds of steps, not thousands), a
    # brief warmup, no weight decay on adapters, frequent evaluation, no samples (the task eval is
    # the measure).
    base = dict(batch_size=8, lr=2e-4, min_lr=2e-5, warmup_iters=10, weight_decay=0.0, beta2=0.999,
                max_iters=200, eval_every=50, eval_iters=10, ckpt_every=100, log_every=5, diag_every=0,
                sample_tokens=0, seq_len=512)
    return TrainConfig(**{**base, **overrides})


# Learning rates: LoRA wants roughly 10x full fine-tuning's (Biderman et al. 2024, "LoRA Learns Less
# and Forgets Less", and PEFT's guides): its update B @ A starts at zero and moves through a rank-r
# bottleneck, while full fine-tuning moves every weight of a model already at a good optimum.
METHOD_TRAIN: dict[str, TrainConfig] = {
    "lora": _train(lr=2e-4),
    "qlora": _train(lr=2e-4),
    "dora": _train(lr=2e-4),
    "full": _train(lr=2e-5, min_lr=2e-6, weight_decay=0.01),
}


def method_defaults(method: str) -> TrainConfig:
    return dataclasses.replace(METHOD_TRAIN[method])


def describe_method_defaults() -> str:
    """The training fields each method changes from TrainConfig's own defaults (for --help)."""
    plain = TrainConfig()
    parts = []
    for method, cfg in METHOD_TRAIN.items():
        changed = [f"--{f.name.replace('_', '-')} {getattr(cfg, f.name):g}" if isinstance(getattr(cfg, f.name), float)
                   else f"--{f.name.replace('_', '-')} {getattr(cfg, f.name)}"
                   for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(plain, f.name)]
        parts.append(f"{method}: {' '.join(changed)}")
    return "; ".join(parts)
