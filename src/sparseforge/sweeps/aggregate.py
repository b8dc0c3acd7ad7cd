"""``sparseforge-aggregate <sweep dir>``: one table from every summary.json of a sweep.

Runs are grouped by their overrides (``.hydra/overrides.yaml``) with the seed left out, so each
row is one sweep point averaged over seeds (one arm of a study): mean ± sample standard deviation
(n-1) and n. Rows follow the order of the sweep's declared axes (``hydra.sweeper.params``), else
their values. The columns are the runs' ``report`` (a study's table: metric, columns, percent,
differences paired by seed), else test/acc, density, training FLOPs and the CL metrics. It prints
the table, writes ``aggregate.csv`` (per group), ``runs.csv`` (per run), ``table.md`` and plots
(accuracy vs density, accuracy vs training FLOPs, CL metrics) next to it. Needs no W&B;
``--wandb entity/project`` reads runs from W&B instead when it is online.

Only runs whose status is "completed" count; the others are listed by status (a run whose summary
still says "running" while no process holds its directory reads as "interrupted"). Where the
sweep's multirun.yaml says which points it has (Hydra's basic sweeper), every point without a
completed result is listed, including points that never started (e.g. refused at start);
``--strict`` then exits 1.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import difflib
import json
import math
import statistics
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparseforge.config.overrides import normalise_overrides
from sparseforge.config.points import NOT_PART_OF_POINT, SEED_KEY, override_key, point_overrides
from sparseforge.config.report import Report
from sparseforge.errors import SparseforgeError
from sparseforge.sweeps.tables import markdown_table, paired_table, row_labels, shown_values, varying_keys
from sparseforge.utils.run_lock import effective_status

NOT_STARTED = "not started (no summary.json: never ran, or refused at start)"

# summary.json sections flattened into "<section>.<key>" columns (numbers only, one level)
SECTIONS = ("sparsity", "flops", "cl", "replay")
DENSITY = "sparsity.density"
TRAIN_FLOPS = "flops.train_relative_to_dense"
CL_COLUMNS = ("cl.avg_acc", "cl.forgetting", "cl.bwt")


class AggregateError(SparseforgeError):
    pass


@dataclass
class RunRecord:
    run_dir: str
    status: str
    point: dict[str, str]  # override key -> value, seed and non-result keys left out
    values: dict[str, float]
    identity: tuple[str, ...] = ()  # the point's overrides, seed included (matches multirun.yaml)
    seed: Any = None
    report: dict[str, Any] | None = None  # the run's config node `report` (a study's table)


@dataclass
class Group:
    point: dict[str, str]
    runs: list[RunRecord] = field(default_factory=list)

    def column(self, name: str) -> list[float]:
        return [r.values[name] for r in self.runs if name in r.values]

    def stats(self, name: str) -> tuple[float | None, float | None, int]:
        """(mean, sample std, n) of a column; std is None for fewer than two runs."""
        xs = self.column(name)
        if not xs:
            return None, None, 0
        return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None), len(xs)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def flat_values(summary: dict[str, Any]) -> dict[str, float]:
    """Numeric results of a summary: metrics as they are named, sections as ``section.key``."""
    values = {}
    for key, value in (summary.get("metrics") or {}).items():
        if (number := _number(value)) is not None:
            values[key] = number
    for section in SECTIONS:
        for key, value in (summary.get(section) or {}).items() if isinstance(summary.get(section), dict) else ():
            if (number := _number(value)) is not None:
                values[f"{section}.{key}"] = number
    if (number := _number(summary.get("wall_time_s"))) is not None:
        values["wall_time_s"] = number
    return values


def point_of(overrides: Iterable[str], ignore: Iterable[str] = ()) -> dict[str, str]:
    kept = point_overrides(overrides, (*NOT_PART_OF_POINT, SEED_KEY, *ignore))
    return {override_key(o): o.split("=", 1)[1] if "=" in o else "" for o in kept}


def _read_overrides(run_dir: Path) -> list[str] | None:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(path)]


def load_runs(sweep_dir: str | Path, ignore: Iterable[str] = ()) -> list[RunRecord]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise AggregateError(f"no such sweep directory: {sweep_dir}")
    records = []
    for path in sorted(sweep_dir.rglob("summary.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            print(f"warning: skipping unreadable {path}: {exc}", file=sys.stderr)
            continue
        overrides = _read_overrides(path.parent)
        if overrides is None:  # not started by Hydra: the run is its own group
            point, identity = {"run": path.parent.name}, ()
        else:
            point, identity = point_of(overrides, ignore), tuple(point_overrides(normalise_overrides(overrides)))
        config = summary.get("config") if isinstance(summary.get("config"), dict) else {}
        records.append(
            RunRecord(
                str(path.parent),
                effective_status(path.parent, summary) or "unknown",
                point,
                flat_values(summary),
                identity,
                seed=summary.get("seed"),
                report=config.get("report"),
            )
        )
    return records


def sweep_order(sweep_dir: str | Path) -> dict[str, list[str]]:
    """The values of every axis the sweep declared (``hydra.sweeper.params``, a study's arms and
    seeds), in their declared order: from the multirun's ``multirun.yaml``, else from a run's
    ``.hydra/hydra.yaml`` (the sbatch path writes no multirun.yaml)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    sweep_dir = Path(sweep_dir)
    for path in [sweep_dir / "multirun.yaml", *sorted(sweep_dir.glob("*/.hydra/hydra.yaml"))[:1]]:
        if not path.is_file():
            continue
        params = OmegaConf.select(OmegaConf.load(path), "hydra.sweeper.params")
        if not params:
            continue
        order = {}
        for key, value in OmegaConf.to_container(params).items():
            try:
                override = OverridesParser.create().parse_overrides([f"{key}={value}"])[0]
                if override.is_discrete_sweep():
                    order[override_key(str(key))] = list(override.sweep_string_iterator())
                elif not override.is_sweep_override():
                    order[override_key(str(key))] = [override.get_value_element_as_str()]
            except Exception:  # e.g. glob(), which needs the config: that axis keeps sorted order
                continue
        return order
    return {}


def planned_points(sweep_dir: str | Path) -> list[list[str]] | None:
    """The points of a multirun, from its multirun.yaml (Hydra's own expansion of the sweep), or
    None where they are not known: no multirun.yaml, or a sweeper that samples them (Optuna)."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    from sparseforge.sweeps.plan import expand

    saved = OmegaConf.load(path)
    sweeper = str(OmegaConf.select(saved, "hydra.sweeper._target_") or "")
    if sweeper and not sweeper.endswith("BasicSweeper"):
        return None
    try:
        return expand([str(o) for o in OmegaConf.select(saved, "hydra.overrides.task") or []])
    except SparseforgeError as exc:
        print(f"warning: cannot list the points of {path}: {exc}", file=sys.stderr)
        return None


def unfinished_points(planned: list[list[str]], records: list[RunRecord]) -> list[tuple[str, str]]:
    """(point, status) of every planned point without a completed run, in the sweep's order."""
    statuses: dict[tuple[str, ...], list[str]] = {}
    for record in records:
        statuses.setdefault(record.identity, []).append(record.status)
    unfinished = []
    for overrides in planned:
        identity = tuple(point_overrides(normalise_overrides(overrides)))  # +experiment= is experiment=
        found = statuses.get(identity, [])
        if "completed" not in found:
            unfinished.append((" ".join(identity) or "(no overrides)", found[0] if found else NOT_STARTED))
    return unfinished


def unfinished_text(unfinished: list[tuple[str, str]], n_planned: int) -> str:
    lines = [f"{len(unfinished)} of {n_planned} sweep points have no completed result:"]
    lines += [f"  {status}: {point}" for point, status in sorted(unfinished, key=lambda u: u[1])]
    return "\n".join(lines)


def _sort_value(value: str) -> tuple:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def group_runs(records: Iterable[RunRecord], order: dict[str, list[str]] | None = None) -> list[Group]:
    """Runs grouped by their point; groups sorted by the declared order of each axis (``order``,
    see ``sweep_order``), else by value."""
    groups: dict[tuple, Group] = {}
    for record in records:
        key = tuple(sorted(record.point.items()))
        groups.setdefault(key, Group(dict(key))).runs.append(record)
    varying = varying_keys(groups.values())
    order = order or {}

    def rank(key: str, value: str) -> tuple:
        declared = order.get(key, [])
        return (0, declared.index(value)) if value in declared else (1, _sort_value(value))

    return sorted(groups.values(), key=lambda g: [rank(k, g.point.get(k, "")) for k in varying])


def value_columns(groups: Iterable[Group], report: Report) -> list[str]:
    """The report's metric and columns; without declared columns, the standard ones present."""
    if report.columns is not None:
        return list(dict.fromkeys([report.metric, *report.columns]))
    present = {c for g in groups for r in g.runs for c in r.values}
    preferred = [report.metric, DENSITY, TRAIN_FLOPS, *CL_COLUMNS]
    return [c for c in dict.fromkeys(preferred) if c in present]


def runs_report(records: Iterable[RunRecord]) -> Report:
    """The ``report`` the runs were started with (a study's), if they agree; else the defaults."""
    found = {json.dumps(r.report, sort_keys=True) for r in records if r.report is not None}
    if len(found) > 1:
        print("warning: the runs have different `report` settings; using the defaults", file=sys.stderr)
    return Report.from_config(json.loads(found.pop())) if len(found) == 1 else Report()


def write_runs_csv(groups: list[Group], path: Path) -> None:
    """One row per run: its row label, overrides, seed and every numeric summary value."""
    keys = sorted({k for g in groups for k in g.point})
    columns = sorted({c for g in groups for r in g.runs for c in r.values})
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", *keys, "seed", *columns, "run_dir"])
        for label, g in zip(row_labels(groups), groups, strict=True):
            for r in g.runs:
                values = ["" if c not in r.values else repr(r.values[c]) for c in columns]
                writer.writerow([label, *(g.point.get(k, "") for k in keys), r.seed, *values, r.run_dir])


def write_csv(groups: list[Group], path: Path) -> None:
    """One row per group: its overrides, n, then mean/std/n of every numeric column."""
    keys = sorted({k for g in groups for k in g.point})
    columns = sorted({c for g in groups for r in g.runs for c in r.values})
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*keys, "n", *[f"{c}{s}" for c in columns for s in (":mean", ":std", ":n")], "run_dirs"])
        for g in groups:
            row: list[Any] = [g.point.get(k, "") for k in keys] + [len(g.runs)]
            for c in columns:
                mean, std, n = g.stats(c)
                row += ["" if mean is None else repr(mean), "" if std is None else repr(std), n]
            writer.writerow(row + [";".join(r.run_dir for r in g.runs)])


def plot(groups: list[Group], metric: str, out_dir: Path) -> list[Path]:
    """Accuracy vs density, vs training FLOPs (one line per setting of the other overrides) and
    the CL metrics per group, where the summaries have them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    varying = varying_keys(groups)
    for x_col, name, xlabel in (
        (DENSITY, "acc_vs_density.png", "density (fraction of weights kept)"),
        (TRAIN_FLOPS, "acc_vs_flops.png", "training FLOPs relative to dense"),
    ):
        points = [(g, g.stats(x_col), g.stats(metric)) for g in groups]
        points = [(g, x, y) for g, x, y in points if x[0] is not None and y[0] is not None]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        series: dict[str, list] = {}
        shown = {k: dict(zip(map(id, groups), shown_values(groups, k), strict=True)) for k in varying}
        for g, x, y in points:
            label = ", ".join(f"{k}={shown[k][id(g)]}" for k in varying if "density" not in k and k in g.point)
            series.setdefault(label or metric, []).append((x[0], y[0], y[1] or 0.0))
        for label, pts in series.items():
            pts.sort()
            ax.errorbar(
                [p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3, label=label
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
        written.append(out_dir / name)

    cl_cols = [c for c in CL_COLUMNS if any(g.stats(c)[0] is not None for g in groups)]
    if cl_cols:
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups)), 4))
        width = 0.8 / len(cl_cols)
        for i, col in enumerate(cl_cols):
            stats = [g.stats(col) for g in groups]
            ax.bar(
                [j + i * width for j in range(len(groups))],
                [s[0] or 0.0 for s in stats],
                width,
                yerr=[s[1] or 0.0 for s in stats],
                capsize=3,
                label=col,
            )
        ax.set_xticks([j + width * (len(cl_cols) - 1) / 2 for j in range(len(groups))])
        ax.set_xticklabels(
            row_labels(groups),
            rotation=30,
            ha="right",
            fontsize=7,
        )
        ax.axhline(0, color="black", linewidth=0.5)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "cl_metrics.png", dpi=120)
        plt.close(fig)
        written.append(out_dir / "cl_metrics.png")
    return written


def load_wandb_runs(path: str, group: str | None, ignore: Iterable[str] = ()) -> list[RunRecord]:
    """Runs of a W&B project (optionally one group). Their overrides are not stored in W&B, so
    they are grouped by the config values that differ between runs, seed-derived ones left out."""
    from sparseforge.lightning.loggers import resolve_mode

    if resolve_mode("auto") != "online":
        raise AggregateError(
            "W&B is not online here (no API key, or WANDB_MODE=offline/disabled): aggregate the sweep directory instead"
        )
    import wandb

    try:
        runs = list(wandb.Api(timeout=30).runs(path, filters={"group": group} if group else None))
    except Exception as exc:  # network and permission errors
        raise AggregateError(f"cannot read W&B runs of {path}: {exc}") from None
    flats = [_flatten(dict(run.config)) for run in runs]
    keys = {k for f in flats for k in f}
    skip = (*NOT_PART_OF_POINT, SEED_KEY, *ignore)
    varying = [
        k
        for k in sorted(keys)
        if len({str(f.get(k)) for f in flats}) > 1 and not any(k == s or k.startswith(s + ".") for s in skip)
    ]
    # keys that follow the seed (data.seed: ${seed}) would split every group by seed
    varying = [k for k in varying if not all(str(f.get(k)) == str(f.get(SEED_KEY)) for f in flats)]
    records = []
    for run, flat in zip(runs, flats, strict=True):
        values = {k: float(v) for k, v in dict(run.summary).items() if _number(v) is not None}
        records.append(
            RunRecord(
                f"wandb:{run.path}",
                "completed" if run.state == "finished" else run.state,
                {k: str(flat.get(k)) for k in varying},
                values,
                seed=flat.get(SEED_KEY),
                report=run.config.get("report"),
            )
        )
    return records


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def aggregate(
    records: list[RunRecord],
    metric: str | None = None,
    out_dir: Path | None = None,
    digits: int = 4,
    order: dict[str, list[str]] | None = None,
    report: Report | None = None,
    columns: Iterable[str] = (),
    planned: list[list[str]] | None = None,
) -> tuple[list[Group], str]:
    """The table (and, with ``out_dir``, the files) of ``records``. The report is ``report``, else
    the runs' own (a study's); ``metric`` replaces its metric and ``columns`` its columns.
    ``planned``: the sweep's points, to list those without a completed result."""
    statuses = Counter(r.status for r in records)
    completed = [r for r in records if r.status == "completed"]
    unfinished = unfinished_text(unfinished_points(planned, records), len(planned)) if planned else ""
    if not completed:
        detail = f"; {unfinished}" if unfinished else ""
        raise AggregateError(f"no completed runs ({dict(statuses) or 'no summary.json found'}){detail}")
    report = report or runs_report(completed)
    if metric is not None:
        report = dataclasses.replace(report, metric=metric)
    if columns:
        report = dataclasses.replace(report, columns=list(columns))
    groups = group_runs(completed, order)
    text = markdown_table(groups, value_columns(groups, report), digits, report)
    common = {k: v for k, v in groups[0].point.items() if k not in varying_keys(groups)} if len(groups) > 1 else {}
    if common:
        text = "common: " + " ".join(f"{k}={v}" for k, v in common.items()) + "\n\n" + text
    if report.paired:
        text += "\n\n" + paired_table(groups, report, digits)
    others = {s: n for s, n in statuses.items() if s != "completed"}
    if others:
        text += "\n\nnot included: " + ", ".join(f"{n} {s}" for s, n in sorted(others.items()))
    if unfinished and unfinished_points(planned, records):
        text += "\n\n" + unfinished
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_csv(groups, out_dir / "aggregate.csv")
        write_runs_csv(groups, out_dir / "runs.csv")
        (out_dir / "table.md").write_text(text + "\n")
        files = [out_dir / "aggregate.csv", out_dir / "runs.csv", out_dir / "table.md"]
        written = [*files, *plot(groups, report.metric, out_dir)]
        text += "\n\nwrote: " + ", ".join(str(p) for p in written)
    return groups, text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="sparseforge-aggregate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep_dir", nargs="?", help="a sweep directory, e.g. outputs/multiruns/dens")
    parser.add_argument(
        "--metric", help="the accuracy column and y axis (default: the runs' report.metric, else test/acc)"
    )
    parser.add_argument("--out", help="where the CSV and plots go (default <sweep_dir>/aggregate)")
    parser.add_argument(
        "--ignore", action="append", default=[], help="also leave this override key out of the grouping"
    )
    parser.add_argument(
        "--column",
        action="append",
        default=[],
        help="a column of the table after the metric (repeat it; default: density, FLOPs and CL metrics)",
    )
    parser.add_argument("--digits", type=int, default=4)
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from W&B (online only) instead")
    parser.add_argument("--group", help="with --wandb: only this W&B group (the sweep name)")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 unless every point of the sweep has a completed result (e.g. before publishing a table)",
    )
    args = parser.parse_args(argv)
    planned = None
    try:
        order = None
        if args.wandb:
            records = load_wandb_runs(args.wandb, args.group, args.ignore)
            out = Path(args.out) if args.out else None
        elif args.sweep_dir:
            records = load_runs(args.sweep_dir, args.ignore)
            planned = planned_points(args.sweep_dir)
            out = Path(args.out) if args.out else Path(args.sweep_dir) / "aggregate"
            order = sweep_order(args.sweep_dir)
        else:
            raise AggregateError("give a sweep directory (or --wandb ENTITY/PROJECT)")
        _, text = aggregate(records, args.metric, out, args.digits, order, columns=args.column, planned=planned)
        reported = {c for r in records for c in r.values}
        for column in args.column:
            if column not in reported:  # shown empty; most likely a typo
                close = difflib.get_close_matches(column, sorted(reported), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                print(f"warning: no run reports column {column!r}{hint}", file=sys.stderr)
    except SparseforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    print(text)
    incomplete = unfinished_points(planned, records) if planned else [r for r in records if r.status != "completed"]
    if args.strict and incomplete:
        print(f"error: --strict: {len(incomplete)} sweep point(s) without a completed result", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
