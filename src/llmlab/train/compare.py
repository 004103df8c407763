"""Comparing runs: which config fields differ, final and best losses, and one overlaid plot."""

from __future__ import annotations

import json
from pathlib import Path

from llmlab.core.errors import LLMLabError
from llmlab.core.io import read_json_object
from llmlab.train.metrics import plot_losses, read_metrics


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("data_source",):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_run(run_dir: Path) -> tuple[dict, list[dict]]:
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise LLMLabError(f"{run_dir} is not a run directory (no config.json)")
    config = read_json_object(config_path, "it was edited or cut short")
    return config, read_metrics(run_dir)


def summarize(rows: list[dict]) -> dict:
    vals = [r for r in rows if r.get("val_loss") is not None]
    last = rows[-1] if rows else {}
    return {"steps": last.get("step"), "time_s": last.get("time_s"),
            "final_train_loss": vals[-1].get("train_eval_loss") if vals else None,
            "final_val_loss": vals[-1]["val_loss"] if vals else None,
            "best_val_loss": min(r["val_loss"] for r in vals) if vals else None,
            "tokens_per_s": (sum(r["tokens_per_s"] for r in rows if "tokens_per_s" in r) /
                             max(1, sum(1 for r in rows if "tokens_per_s" in r))) if rows else None}


def run_names(run_dirs: list[Path], labels: list[str] | None = None) -> list[str]:
    """What each run is called in the table and the legend: its label when given, else its
    directory name (the full path when two directories share a name)."""
    if labels is not None:
        labels = [label.strip() for label in labels]
        if len(labels) != len(run_dirs):
            raise LLMLabError(f"--labels has {len(labels)} name(s) for {len(run_dirs)} runs: give one "
                              "per run, comma-separated, in the order of the runs")
        if any(not label for label in labels) or len(set(labels)) != len(labels):
            raise LLMLabError(f"--labels {','.join(labels)}: each label must be non-empty and different "
                              "from the others")
        return labels
    names = [d.name if d.name else str(d) for d in run_dirs]
    if len(set(names)) != len(names):
        names = [str(d) for d in run_dirs]
    return names


def compare_runs(run_dirs: list[Path], plot_path: Path | None = None,
                 labels: list[str] | None = None) -> dict:
    """{"runs": {name: summary}, "differences": {field: {name: value}}, "plot": path}.
    labels: names for the runs (one per directory) in place of their directory names."""
    names = run_names(run_dirs, labels)
    loaded = {name: load_run(d) for name, d in zip(names, run_dirs)}
    flat = {name: _flatten(cfg) for name, (cfg, _) in loaded.items()}
    ignore = {"data_dir", "llmlab_version"}
    keys = sorted(set().union(*flat.values()) - ignore)
    diffs = {k: {n: flat[n].get(k) for n in names} for k in keys
             if len({json.dumps(flat[n].get(k), sort_keys=True) for n in names}) > 1}
    result = {"runs": {n: summarize(rows) for n, (_, rows) in loaded.items()}, "differences": diffs}
    if plot_path is not None:
        plot_losses({n: rows for n, (_, rows) in loaded.items()}, plot_path, title="llmlab runs compare")
        result["plot"] = str(plot_path)
    return result


def format_table(result: dict) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))

    names = list(result["runs"])
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in ("steps", "time_s", "final_train_loss", "final_val_loss", "best_val_loss", "tokens_per_s"):
        lines.append(f"| {key} | " + " | ".join(fmt(result["runs"][n][key]) for n in names) + " |")
    if result["differences"]:
        lines += ["", "| config field | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for key, values in result["differences"].items():
            lines.append(f"| {key} | " + " | ".join(fmt(values[n]) for n in names) + " |")
    else:
        lines.append("\n(configs are identical)")
    return "\n".join(lines)
