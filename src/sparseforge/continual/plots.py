"""The accuracy matrix as a heat map (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def save_accuracy_heatmap(R: Sequence[Sequence[float | None]], path: str | Path, title: str = "") -> Path:
    """Write R (rows: after task t, columns: task j; None = not evaluated) as a PNG."""
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
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task t")
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
