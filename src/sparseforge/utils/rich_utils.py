"""Console output: the config tree at start and the results table at the end."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table
from rich.tree import Tree

ORDER = (
    "dataset",
    "model",
    "scenario",
    "method",
    "sparsity",
    "optimizer",
    "lr_scheduler",
    "data",
    "trainer",
    "logger",
    "callbacks",
    "paths",
)


def print_config_tree(cfg: DictConfig, fields: Sequence[str] = ORDER) -> None:
    tree = Tree("config", style="dim")
    keys = [f for f in fields if f in cfg] + [k for k in cfg if k not in fields]
    for key in keys:
        node = cfg[key]
        text = OmegaConf.to_yaml(node, resolve=False) if isinstance(node, DictConfig) else str(node)
        tree.add(str(key), style="bold").add(Syntax(text, "yaml"))
    Console().print(tree)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_results(summary: dict[str, Any]) -> None:
    console = Console()
    table = Table(title="results", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.get("metrics", {}).items():
        table.add_row(key, _fmt(value))
    sparsity = summary.get("sparsity") or {}
    if "density" in sparsity:
        table.add_row("density", _fmt(sparsity["density"]))
    flops = summary.get("flops") or {}
    for key in ("train_relative_to_dense", "inference_relative_to_dense"):
        if key in flops:
            table.add_row(f"flops/{key}", _fmt(flops[key]))
    cl = summary.get("cl") or {}
    for key in ("forgetting", "bwt"):
        if cl.get(key) is not None:
            table.add_row(f"cl/{key}", _fmt(cl[key]))
    table.add_row("wall time (s)", _fmt(summary.get("wall_time_s", 0.0)))
    console.print(table)
    matrix = cl.get("acc_matrix")
    if matrix and len(matrix) > 12:  # too wide for a terminal: the final row, the rest is in the run directory
        final = [v for v in matrix[cl.get("completed_tasks", len(matrix)) - 1] if v is not None]
        console.print(
            "accuracy per task after the last (class-IL): " + " ".join(f"{v:.3f}" for v in final),
            soft_wrap=True,
        )
        console.print("the whole matrix R[t][j]: acc_matrix.png and summary.json in the run directory")
    elif matrix and len(matrix) > 1:
        acc = Table(title="accuracy matrix R[t][j] (class-IL, after task t on task j)")
        acc.add_column("t")
        for j in range(len(matrix)):
            acc.add_column(str(j), justify="right")
        for t, row in enumerate(matrix):
            acc.add_row(str(t), *["" if v is None else f"{v:.3f}" for v in row])
        console.print(acc)
    console.print(f"run directory: {summary.get('run_dir', '')}", soft_wrap=True)
