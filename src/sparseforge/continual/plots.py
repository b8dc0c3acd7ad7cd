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
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.array([[np.nan if v is None else 100.0 * v for v in row] for row in R], dtype=float)
    rows, cols = values.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * cols, 0.8 + 0.5 * rows), dpi=100)
    image = ax.imshow(np.ma.masked_invalid(values), vmin=0, vmax=100, cmap="viridis")
    if rows * cols <= 400:  # numbers stay readable up to 20 x 20
        for t in range(rows):
            for j in range(cols):
                if not np.isnan(values[t, j]):
                    ax.text(
                        j,
                        t,
                        f"{values[t, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if values[t, j] < 60 else "black",
                    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows))
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def save_confusion_heatmap(confusion: Sequence[Sequence[int]], path: str | Path, title: str = "") -> Path:
    """Write a confusion matrix (rows: true class, columns: predicted class; counts) as a PNG,
    each row coloured by its share of the class's test examples."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.array(confusion, dtype=float)
    n = counts.shape[0]
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = min(2.0 + 0.45 * n, 16.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size), dpi=100)
    image = ax.imshow(100.0 * shares, vmin=0, vmax=100, cmap="viridis")
    if n <= 20:  # counts stay readable up to 20 classes
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(
                        j,
                        i,
                        f"{counts[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if shares[i, j] < 0.6 else "black",
                    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 50:
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="share of the true class (%)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
