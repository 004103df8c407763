"""`llmlab data report`: stats.json -> markdown (per-stage counts, removal reasons, examples,
input errors) and PNG histograms (kept vs removed per quality metric, documents per stage)."""

from __future__ import annotations

import json
from pathlib import Path

from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_write_text
from llmlab.data.curation.stages import HIST_EDGES


def load_stats(directory: str | Path) -> dict:
    path = Path(directory) / "stats.json"
    if not path.is_file():
        raise LLMLabError(f"{path} does not exist; run `llmlab data run` with this output directory first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LLMLabError(f"{path} is not valid JSON ({e}); re-run `llmlab data run`") from None


def plot_report(stats: dict, img_dir: Path, prefix: str = "curation") -> list[Path]:
    from llmlab.core.plotting import pyplot

    plt = pyplot()

    img_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    names = list(stats["stages"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(names, [stats["stages"][n]["docs_out"] for n in names], color="tab:blue")
    ax.set_ylabel("documents after stage")
    ax.set_title(f"{stats['docs_in']} documents in, {stats['docs_out']} out")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    paths.append(img_dir / f"{prefix}-stages.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(HIST_EDGES), figsize=(4 * len(HIST_EDGES), 3.2))
    for ax, (name, edges) in zip(axes, HIST_EDGES.items()):
        h = stats["histograms"][name]
        lefts = list(range(len(edges) - 1)) if name == "words" else edges[:-1]
        width = 0.9 if name == "words" else (edges[1] - edges[0]) * 0.9
        ax.bar(lefts, h["kept"], width=width, align="edge", label="kept", color="tab:green")
        ax.bar(lefts, h["removed"], width=width, align="edge", bottom=h["kept"], label="removed", color="tab:red")
        ax.set_title(name if name != "words" else "words (log2 bins)")
        ax.legend(fontsize=7)
    fig.suptitle("quality metrics at the quality stage")
    fig.tight_layout()
    paths.append(img_dir / f"{prefix}-histograms.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def render_markdown(stats: dict, images: list[Path] | None = None, base: Path | None = None) -> str:
    lines = ["# Curation report", "",
             f"{stats['docs_in']} documents read from {stats['shards']} input file(s), {stats['docs_out']} kept "
             f"({100 * stats['docs_out'] / max(1, stats['docs_in']):.1f}%) in {stats['seconds']:.1f} s.", "",
             "| stage | in | out | removed | modified | reasons |", "|---|---:|---:|---:|---:|---|"]
    for name, st in stats["stages"].items():
        reasons = ", ".join(f"{k}: {v}" for k, v in st["removed"].items())
        details = ", ".join(f"{k}: {v}" for k, v in st.get("details", {}).items())
        lines.append(f"| {name} | {st['docs_in']} | {st['docs_out']} | {st['docs_in'] - st['docs_out']} | "
                     f"{st['modified']} | {reasons}{' (' + details + ')' if details else ''} |")
    errors = stats["input_errors"]
    lines += ["", "## Input errors", ""]
    if errors["counts"]:
        lines += [f"- {k}: {v}" for k, v in errors["counts"].items()]
        lines += [f"  - `{e['where']}` ({e['kind']}): {e['detail'][:120]}" for e in errors["examples"][:10]]
    else:
        lines.append("none")
    lines += ["", "## Removed examples", ""]
    for name, st in stats["stages"].items():
        for reason, examples in st.get("examples", {}).items():
            for ex in examples[:1]:
                snippet = ex["text"][:200].replace("\n", " ").replace("|", "\\|")
                lines.append(f"- **{reason}** `{ex['id']}`: {snippet}")
    if images:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem}]({p.relative_to(base) if base else p})" for p in images]
    return "\n".join(lines) + "\n"


def write_report(directory: str | Path) -> dict:
    """Write DIR/report.md and DIR/report/*.png; returns their paths and the stats."""
    directory = Path(directory)
    stats = load_stats(directory)
    images = plot_report(stats, directory / "report")
    text = render_markdown(stats, images, base=directory)
    atomic_write_text(directory / "report.md", text)
    return {"report": str(directory / "report.md"), "images": [str(p) for p in images], "stats": stats,
            "markdown": text}
