"""Pictures for the probes: one figure helper and one heatmap, so every probe's PNG looks alike.

    figure(rows, cols, cell)        a matplotlib figure (Agg, no screen needed; inline in a notebook)
    save(fig, path)                 written atomically, then closed
    heatmap(ax, values, ...)        a matrix with labelled axes, an optional colour bar and cell text
    axis_label(text)                a token made printable on an axis: spaces and newlines shown
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from llmlab.core.io import atomic_save

DPI = 110


def figure(rows: int = 1, cols: int = 1, cell: tuple[float, float] = (4.0, 3.5), **kwargs: Any):
    """(fig, axes as a flat list). matplotlib is imported here, so `llmlab inspect --help` stays fast."""
    import warnings

    from llmlab.core.plotting import pyplot

    plt = pyplot()

    # A token from another script (CJK, emoji) may lack a glyph in the default font: it shows as a
    # box, which is fine for a label, and the warning per glyph would bury the command's output.
    warnings.filterwarnings("ignore", message="Glyph .* missing from font")
    fig, axes = plt.subplots(rows, cols, figsize=(cell[0] * cols, cell[1] * rows), squeeze=False, **kwargs)
    return fig, [ax for row in axes for ax in row]


def save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    atomic_save(path, lambda f: fig.savefig(f, format="png", dpi=DPI))
    plt.close(fig)
    return path


def axis_label(text: str, width: int = 12) -> str:
    """Make whitespace visible (a leading space is most of what a BPE token is) and cap the width."""
    shown = text.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5")
    if "$" in shown:   # matplotlib would read $...$ as mathtext
        shown = shown.replace("$", r"\$")
    return shown if len(shown) <= width else shown[:width - 1] + "\u2026"


def heatmap(ax, values, xlabels: Sequence[str] | None = None, ylabels: Sequence[str] | None = None,
            title: str = "", cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None,
            colorbar: str | None = None, cell_text: Sequence[Sequence[str]] | None = None,
            max_ticks: int = 48) -> None:
    """values (rows, cols) as an image; labels are shown when there are at most max_ticks of them."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    image = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    for labels, set_ticks, set_labels, count in ((xlabels, ax.set_xticks, ax.set_xticklabels, data.shape[1]),
                                                 (ylabels, ax.set_yticks, ax.set_yticklabels, data.shape[0])):
        if labels is not None and len(labels) <= max_ticks:
            set_ticks(range(count))
            set_labels([axis_label(t) for t in labels], fontsize=7)
    if xlabels is not None and len(xlabels) <= max_ticks:
        for tick in ax.get_xticklabels():
            tick.set_rotation(90)
    if cell_text is not None:
        for r, row in enumerate(cell_text):
            for c, text in enumerate(row):
                if text:
                    red, green, blue, _ = image.cmap(image.norm(data[r, c]))
                    light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5     # luma: dark text on light cells
                    ax.text(c, r, axis_label(text, 8), ha="center", va="center", fontsize=5.5,
                            color="black" if light else "white")
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar is not None:
        ax.figure.colorbar(image, ax=ax, label=colorbar, fraction=0.046, pad=0.02)
