"""Run metrics: `metrics.jsonl` (one JSON object per logged step), `loss.png`, TensorBoard, W&B.

metrics.jsonl is append-only and line-buffered, so it survives a crash; on resume, lines from
steps after the checkpoint are dropped so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_save, atomic_write_text

METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return rows


class MetricsLog:
    def __init__(self, run_dir: Path, config: dict, resume_step: int | None = None,
                 tensorboard: bool = True, wandb: bool = False):
        self.path = run_dir / METRICS
        if resume_step is not None:
            kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.file = open(self.path, "a", encoding="utf-8", buffering=1)
        self.tb = self._tensorboard(run_dir) if tensorboard else None
        self.wandb = self._wandb(run_dir, config) if wandb else None

    @staticmethod
    def _tensorboard(run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra
            return None
        return SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    @staticmethod
    def _wandb(run_dir: Path, config: dict):
        try:
            import wandb
        except ImportError:
            raise LLMLabError("--wandb needs the wandb package: pip install 'llmlab[tracking]'") from None
        return wandb.init(project="llmlab", dir=str(run_dir), name=run_dir.name, config=config, resume="allow")

    def log(self, row: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self.file.write(json.dumps(clean) + "\n")
        scalars = {k: v for k, v in clean.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, row["step"])
        if self.wandb is not None:
            self.wandb.log(scalars, step=row["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def plot_losses(runs: dict[str, list[dict]], path: Path, title: str = "") -> None:
    """Train (thin) and val (markers) loss against step, one colour per run; written atomically."""
    from llmlab.core.plotting import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, rows) in enumerate(runs.items()):
        color = f"C{i % 10}"
        train = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
        val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
        if train:
            ax.plot(*zip(*train), color=color, alpha=0.35, linewidth=0.8, label=f"{name} train")
        if val:
            ax.plot(*zip(*val), color=color, marker="o", markersize=3, label=f"{name} val")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_save(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
