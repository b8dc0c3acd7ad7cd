"""A bar chart of per-layer densities (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def plot_layer_densities(
    densities: Mapping[str, float], path: str | Path, title: str = "", global_density: float | None = None
) -> Path:
    """Write a PNG with one bar per layer (in model order) and the global density as a line."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(densities)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(names) + 2), 4.0))
    ax.bar(range(len(names)), [densities[n] for n in names], color="#4c72b0")
    if global_density is not None:
        ax.axhline(global_density, color="#c44e52", linestyle="--", label=f"global {global_density:.4g}")
        ax.legend(loc="upper right")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=75, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("density (non-zeros / weights)")
    ax.set_title(title or "per-layer density")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
