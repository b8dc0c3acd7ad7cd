"""The accuracy matrix and the confusion matrix as heat maps (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def save_accuracy_heatmap(
    R: Sequence[Sequence[float | None]],
    path: str | Path,
    title: str = "",
    xlabel: str = "evaluated on task j",
    ylabel: str = "after training task t",
) -> Path:
    """Write R (rows: after task t, columns: task j; None = not evaluated) as a PNG; with other
    labels, any such table of accuracies (e.g. per class after each task)."""
    import numpy as np

    percent = np.array([[np.nan if v is None else 100.0 * v for v in row] for row in R], dtype=float)
    rows, cols = percent.shape
    labels = None
    if rows * cols <= 400:  # numbers stay readable up to 20 x 20
        labels = [[None if np.isnan(v) else f"{v:.0f}" for v in row] for row in percent]
    return _save_heatmap(
        percent,
        labels,
        path,
        title=title,
        xlabel=xlabel,
        ylabel=ylabel,
        colorbar="accuracy (%)",
        figsize=(1.0 + 0.55 * cols, 0.8 + 0.5 * rows),
        fontsize=7,
    )


def save_confusion_heatmap(confusion: Sequence[Sequence[int]], path: str | Path, title: str = "") -> Path:
    """Write a confusion matrix (rows: true class, columns: predicted class; counts) as a PNG,
    each row coloured by its share of the class's test examples."""
    import numpy as np

    counts = np.array(confusion, dtype=float)
    n = counts.shape[0]
    percent = 100.0 * counts / np.maximum(counts.sum(1, keepdims=True), 1)
    labels = None
    if n <= 20:  # counts stay readable up to 20 classes
        labels = [[f"{c:.0f}" if c else None for c in row] for row in counts]
    size = min(2.0 + 0.45 * n, 16.0)
    return _save_heatmap(
        percent,
        labels,
        path,
        title=title,
        xlabel="predicted class",
        ylabel="true class",
        colorbar="share of the true class (%)",
        figsize=(size + 1.0, size),
        fontsize=6,
        ticks=n <= 50,
    )


def _save_heatmap(
    percent,
    labels: Sequence[Sequence[str | None]] | None,
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    colorbar: str,
    figsize: tuple[float, float],
    fontsize: int,
    ticks: bool = True,
) -> Path:
    """Draw ``percent`` (rows x columns on a 0-100 scale; NaN left blank) with ``labels[i][j]``
    written in each cell (None: nothing), and save it as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    rows, cols = percent.shape
    fig, ax = plt.subplots(figsize=figsize, dpi=100)
    image = ax.imshow(np.ma.masked_invalid(percent), vmin=0, vmax=100, cmap="viridis")
    for i, row in enumerate(labels or []):
        for j, text in enumerate(row):
            if text is not None:
                colour = "white" if percent[i, j] < 60 else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=colour)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ticks:
        ax.set_xticks(range(cols))
        ax.set_yticks(range(rows))
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=colorbar)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
