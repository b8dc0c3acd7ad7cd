"""The Markdown tables of ``sparseforge-aggregate``: one row per group, and differences paired by seed.

Rows are labelled by the values of the overrides that differ between them; a group option's
shared folder is left out of the label (``arm=cl_split_mnist/er`` reads ``er``). Columns a
study's ``report.percent`` names are shown x100, in %.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from sparseforge.config.report import Report

if TYPE_CHECKING:
    from sparseforge.sweeps.aggregate import Group


def varying_keys(groups: Iterable[Group]) -> list[str]:
    """Override keys whose value differs between groups (the table's leading columns)."""
    groups = list(groups)
    keys = sorted({k for g in groups for k in g.point})
    return [k for k in keys if len({g.point.get(k) for g in groups}) > 1]


def shown_values(groups: Sequence[Group], key: str) -> list[str]:
    """The groups' values of ``key``, less a folder all of them share (``study/arm`` -> ``arm``)."""
    values = [g.point.get(key, "") for g in groups]
    folders = {v.rsplit("/", 1)[0] for v in values if "/" in v}
    if len(folders) == 1 and all("/" in v for v in values):
        return [v.rsplit("/", 1)[1] for v in values]
    return values


def row_labels(groups: Sequence[Group]) -> list[str]:
    """One label per group: its values of the varying keys (what ``report.paired`` names)."""
    keys = varying_keys(groups)
    if not keys:
        return ["all"] * len(groups)
    columns = [shown_values(groups, k) for k in keys]
    return [", ".join(col[i] for col in columns) for i in range(len(groups))]


def fmt(mean: float | None, std: float | None, digits: int = 4) -> str:
    """``mean ± std`` with ``digits`` decimals; counts (bytes, samples) without decimals and
    large values (FLOPs) with ``digits`` significant digits."""
    if mean is None:
        return "–"
    if abs(mean) >= 1e6:
        spec = f".{max(digits, 1)}g"
    elif abs(mean) >= 1000 and float(mean).is_integer() and (std is None or float(std).is_integer()):
        spec = ".0f"
    else:
        spec = f".{digits}f"
    return f"{mean:{spec}}" + (f" ± {std:{spec}}" if std is not None else "")


def _scaled(report: Report, column: str, digits: int) -> tuple[float, int, str]:
    """(factor, digits, header) of a column: percent columns x100 with two digits fewer."""
    if column in report.percent:
        return 100.0, max(digits - 2, 0), f"{column} (%)"
    return 1.0, digits, column


def markdown_table(groups: list[Group], columns: list[str], digits: int = 4, report: Report | None = None) -> str:
    report = report or Report()
    keys = varying_keys(groups)
    key_cells = [shown_values(groups, k) for k in keys]
    if not keys and len(groups) == 1:
        keys = ["point"]
        key_cells = [[" ".join(f"{a}={b}" for a, b in groups[0].point.items()) or "(all)"]]
    scales = [_scaled(report, c, digits) for c in columns]
    header = [*keys, "n", *(h for _, _, h in scales)]
    rows = []
    for i, g in enumerate(groups):
        cells = [col[i] for col in key_cells] + [str(len(g.runs))]
        for column, (factor, places, _) in zip(columns, scales, strict=True):
            mean, std, _ = g.stats(column)
            cells.append(fmt(None if mean is None else mean * factor, None if std is None else std * factor, places))
        rows.append(cells)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _find(groups: Sequence[Group], labels: list[str], name: str) -> Group | None:
    """The group labelled ``name``, or whose value of some override is ``name`` (``study/arm``)."""
    for group, label in zip(groups, labels, strict=True):
        if label == name or name in group.point.values():
            return group
    return None


def _per_seed(group: Group, metric: str) -> dict:
    values: dict = {}
    for run in group.runs:
        if metric in run.values:
            values.setdefault(run.seed, []).append(run.values[metric])
    return {seed: statistics.fmean(v) for seed, v in values.items()}


def paired_table(groups: list[Group], report: Report, digits: int = 4) -> str:
    """``metric(A) - metric(B)`` seed by seed for every pair of ``report.paired``: each seed, mean, min, max."""
    if not report.paired:
        return ""
    labels = row_labels(groups)
    factor, places, name = _scaled(report, report.metric, digits)
    lines = [
        f"paired by seed: {name} of A minus B",
        "",
        "| A − B | n | per seed | mean | min | max |",
        "|---|---|---|---|---|---|",
    ]
    for a, b in report.paired:
        ga, gb = _find(groups, labels, a), _find(groups, labels, b)
        if ga is None or gb is None:
            missing = a if ga is None else b
            lines.append(f"| {a} − {b} | 0 | no row {missing!r} (rows: {', '.join(labels)}) | – | – | – |")
            continue
        va, vb = _per_seed(ga, report.metric), _per_seed(gb, report.metric)
        seeds = sorted(set(va) & set(vb), key=str)
        diffs = [factor * (va[s] - vb[s]) for s in seeds]
        if not diffs:
            lines.append(f"| {a} − {b} | 0 | no seed in both | – | – | – |")
            continue
        per_seed = ", ".join(f"{s}: {d:.{places}f}" for s, d in zip(seeds, diffs, strict=True))
        stats = (statistics.fmean(diffs), min(diffs), max(diffs))
        lines.append(
            f"| {a} − {b} | {len(diffs)} | {per_seed} | " + " | ".join(f"{v:.{places}f}" for v in stats) + " |"
        )
    return "\n".join(lines)
