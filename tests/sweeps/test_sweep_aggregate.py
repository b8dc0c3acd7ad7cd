"""sparseforge-aggregate on a sweep directory laid out as Hydra writes it (summary.json and
.hydra/overrides.yaml per run): grouping without the seed, mean ± sample std and n, CSV, plots."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess

import pytest

from sparseforge.sweeps.aggregate import (
    NOT_STARTED,
    AggregateError,
    aggregate,
    load_runs,
    planned_points,
    unfinished_points,
)
from tests.helpers.cli import sweep_tool

# (density, seed) -> test/acc, train FLOPs; CL metrics and a failed run on top
ACC = {(0.05, 0): 0.61, (0.05, 1): 0.65, (0.05, 2): 0.60, (0.1, 0): 0.70, (0.1, 1): 0.74}
FORGETTING = {(0.05, 0): 0.30, (0.05, 1): 0.20, (0.05, 2): 0.25, (0.1, 0): 0.10, (0.1, 1): 0.14}


def write_run(sweep, name, overrides, summary):
    run = sweep / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (run / "summary.json").write_text(json.dumps(summary))


def aggregate_cli(*args: str) -> subprocess.CompletedProcess:
    """``sparseforge-aggregate ARGS`` as a user runs it."""
    return sweep_tool("aggregate", *args)


@pytest.fixture
def sweep(tmp_path):
    sweep = tmp_path / "multiruns" / "dens"
    for (density, seed), acc in ACC.items():
        write_run(
            sweep,
            f"d{density}-s{seed}",
            ["+experiment=rigl_digits", f"sparsity.density={density}", f"seed={seed}", "sweep_name=dens", "logger=csv"],
            {
                "status": "completed",
                "seed": seed,
                "metrics": {"test/acc": acc, "train/loss": 1.0 - acc},
                "sparsity": {"density": density + 0.0001 * seed, "layers": {"fc": 0.1}},
                "flops": {"train_relative_to_dense": 3 * density},
                "cl": {
                    "avg_acc": acc,
                    "forgetting": FORGETTING[(density, seed)],
                    "bwt": -FORGETTING[(density, seed)],
                    "acc_matrix": [[1.0]],
                },
            },
        )
    write_run(
        sweep,
        "d0.2-s0",
        ["+experiment=rigl_digits", "sparsity.density=0.2", "seed=0"],
        {"status": "failed", "error": "RuntimeError: boom", "metrics": {}},
    )
    write_run(
        sweep,
        "d0.2-s1",
        ["+experiment=rigl_digits", "sparsity.density=0.2", "seed=1"],
        {"status": "running", "metrics": {}},
    )
    return sweep


def by_hand(column_of, density):
    xs = [column_of(s) for (d, s) in ACC if d == density]
    return statistics.fmean(xs), statistics.stdev(xs), len(xs)


def test_groups_by_overrides_without_seed_and_matches_hand_computed_stats(sweep):
    groups, text = aggregate(load_runs(sweep), "test/acc", sweep / "agg")
    assert [g.point for g in groups] == [
        {"experiment": "rigl_digits", "sparsity.density": "0.05"},
        {"experiment": "rigl_digits", "sparsity.density": "0.1"},
    ]
    for group, density in zip(groups, (0.05, 0.1), strict=True):
        assert group.stats("test/acc") == pytest.approx(by_hand(lambda s, d=density: ACC[(d, s)], density))
        assert group.stats("cl.forgetting") == pytest.approx(by_hand(lambda s, d=density: FORGETTING[(d, s)], density))

    # the printed table: one row per density, the seed gone, mean ± std over the seeds, n
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| 0.")]
    assert len(rows) == 2
    header = [c.strip() for c in text.splitlines()[2].split("|")[1:-1]]
    assert header[:3] == ["sparsity.density", "n", "test/acc"]
    assert "sparsity.density" in header and "flops.train_relative_to_dense" in header and "cl.forgetting" in header
    for row, density in zip(rows, (0.05, 0.1), strict=True):
        cells = dict(zip(header, (c.strip() for c in row), strict=True))
        mean, std, n = by_hand(lambda s, d=density: ACC[(d, s)], density)
        assert cells["n"] == str(n)
        assert cells["test/acc"] == f"{mean:.4f} ± {std:.4f}"
        f_mean, f_std, _ = by_hand(lambda s, d=density: 3 * d, density)
        assert cells["flops.train_relative_to_dense"] == f"{f_mean:.4f} ± {f_std:.4f}"
    assert text.splitlines()[0] == "common: experiment=rigl_digits"
    assert "not included: 1 failed, 1 interrupted" in text  # "running", but no process holds it


def test_csv_and_plots(sweep):
    aggregate(load_runs(sweep), "test/acc", sweep / "agg")
    rows = list(csv.DictReader((sweep / "agg" / "aggregate.csv").open()))
    assert [r["sparsity.density"] for r in rows] == ["0.05", "0.1"]
    for row, density in zip(rows, (0.05, 0.1), strict=True):
        mean, std, n = by_hand(lambda s, d=density: ACC[(d, s)], density)
        assert float(row["test/acc:mean"]) == mean and float(row["test/acc:std"]) == std and int(row["n"]) == n
        d_mean = statistics.fmean(density + 0.0001 * s for (d, s) in ACC if d == density)
        assert float(row["sparsity.density:mean"]) == pytest.approx(d_mean, rel=0, abs=1e-15)
        assert "sparsity.layers" not in "".join(row)  # nested sections are not columns
    for png in ("acc_vs_density.png", "acc_vs_flops.png", "cl_metrics.png"):
        data = (sweep / "agg" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_chosen_columns_replace_the_default_ones(sweep):
    _, text = aggregate(load_runs(sweep), "test/acc", None, columns=["cl.bwt", "train/loss", "cl.nothing"])
    header = [c.strip() for c in text.splitlines()[2].split("|")[1:-1]]
    assert header == ["sparsity.density", "n", "test/acc", "cl.bwt", "train/loss", "cl.nothing"]
    rows = [line for line in text.splitlines()[4:] if line.startswith("|")]
    assert rows and all(line.rstrip().endswith("| – |") for line in rows)  # reported by no run: empty


def test_single_seed_has_no_std_and_missing_sections_are_fine(tmp_path):
    write_run(tmp_path, "a", ["optimizer.lr=0.1", "seed=0"], {"status": "completed", "metrics": {"test/acc": 0.5}})
    write_run(tmp_path, "b", ["optimizer.lr=0.2", "seed=0"], {"status": "completed", "metrics": {"test/acc": 0.7}})
    groups, text = aggregate(load_runs(tmp_path), "test/acc", None)
    assert [g.stats("test/acc") for g in groups] == [(0.5, None, 1), (0.7, None, 1)]
    assert "| 0.1 | 1 | 0.5000 |" in text and "±" not in text


def test_no_completed_runs_is_an_error(tmp_path):
    write_run(tmp_path, "a", ["seed=0"], {"status": "failed", "metrics": {}})
    with pytest.raises(AggregateError, match="no completed runs"):
        aggregate(load_runs(tmp_path), "test/acc", None)


@pytest.mark.e2e  # a CLI subprocess
def test_cli(sweep):
    result = aggregate_cli(str(sweep))
    assert result.returncode == 0, result.stderr
    assert "| sparsity.density | n | test/acc |" in result.stdout
    chosen = aggregate_cli(str(sweep), "--column", "cl.bwt", "--column", "cl.bwtt", "--out", str(sweep / "o"))
    assert chosen.returncode == 0 and "| sparsity.density | n | test/acc | cl.bwt | cl.bwtt |" in chosen.stdout
    assert "warning: no run reports column 'cl.bwtt' (did you mean 'cl.bwt'?)" in chosen.stderr
    assert (sweep / "aggregate" / "aggregate.csv").exists() and (sweep / "aggregate" / "table.md").exists()
    bad = aggregate_cli(str(sweep / "nope"))
    assert bad.returncode == 2 and bad.stderr.startswith("error: no such sweep directory")


@pytest.mark.e2e  # a CLI subprocess
def test_wandb_source_needs_w_and_b_online(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    result = aggregate_cli("--wandb", "me/proj")
    assert result.returncode == 2 and "error: W&B is not online here" in result.stderr


# -- a study's report: columns, percent, declared row order, differences paired by seed ----------
STUDY_ACC = {("b", 0): 0.80, ("b", 1): 0.84, ("b", 2): 0.83, ("a", 0): 0.70, ("a", 1): 0.71, ("a", 2): 0.76}
REPORT = {
    "metric": "cl.avg_acc",
    "columns": ["cl.forgetting", "replay.bytes", "flops.train_total", "cl.not_measured"],
    "percent": ["cl.avg_acc", "cl.forgetting"],
    "paired": [["b", "a"], ["b", "nope"]],
}


@pytest.fixture
def study(tmp_path):
    sweep = tmp_path / "multiruns" / "s"
    for (arm, seed), acc in STUDY_ACC.items():
        name = f"arm={arm}-{seed}"
        write_run(
            sweep,
            name,
            [f"arm=s/{arm}", f"seed={seed}", "study=s"],
            {
                "status": "completed",
                "seed": seed,
                "metrics": {"test/acc": acc},
                "cl": {"avg_acc": acc, "forgetting": 1 - acc},
                "replay": {"bytes": 39216 if arm == "b" else 39200},
                "flops": {"train_total": 2.451e11 + seed},
                "config": {"report": REPORT, "seed": seed},
            },
        )
        # the sweep's declared axes, as Hydra writes them: b before a (not alphabetical)
        (sweep / name / ".hydra" / "hydra.yaml").write_text(
            "hydra:\n  sweeper:\n    params:\n      arm: s/b,s/a\n      seed: 0,1,2\n"
        )
    return sweep


def test_a_study_report_gives_its_table(study):
    from sparseforge.sweeps.aggregate import sweep_order

    order = sweep_order(study)
    assert order == {"arm": ["s/b", "s/a"], "seed": ["0", "1", "2"]}
    groups, text = aggregate(load_runs(study), None, study / "agg", order=order)
    lines = text.splitlines()
    assert lines[0] == "common: study=s"
    header = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert header == [
        "arm",
        "n",
        "cl.avg_acc (%)",
        "cl.forgetting (%)",
        "replay.bytes",
        "flops.train_total",
        "cl.not_measured",  # declared but in no summary: shown empty, not dropped
    ]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[4:6]]
    assert [r[0] for r in rows] == ["b", "a"]  # the declared order, the study's folder left out
    for row, arm in zip(rows, ("b", "a"), strict=True):
        accs = [100 * v for (a, _), v in STUDY_ACC.items() if a == arm]
        assert row[1] == "3" and row[2] == f"{statistics.fmean(accs):.2f} ± {statistics.stdev(accs):.2f}"
        assert row[4] == ("39216 ± 0" if arm == "b" else "39200 ± 0")  # large integers without decimals
        assert row[5].startswith("2.451e+11 ± ") and row[6] == "–"
    # b − a seed by seed, in percent: 10, 13, 7 points
    paired = next(line for line in lines if line.startswith("| b − a |"))
    cells = [c.strip() for c in paired.split("|")[1:-1]]
    assert cells == ["b − a", "3", "0: 10.00, 1: 13.00, 2: 7.00", "10.00", "7.00", "13.00"]
    assert "| b − nope | 0 | no row 'nope' (rows: b, a) |" in text
    runs = list(csv.DictReader((study / "agg" / "runs.csv").open()))
    assert len(runs) == 6 and {(r["row"], r["seed"]) for r in runs} == {(a, str(s)) for a, s in STUDY_ACC}
    assert all(float(r["cl.avg_acc"]) == STUDY_ACC[(r["row"], int(r["seed"]))] for r in runs)


@pytest.mark.e2e  # a CLI subprocess
def test_the_metric_flag_replaces_the_reports_metric(study):
    result = aggregate_cli(str(study), "--metric", "test/acc")
    assert result.returncode == 0, result.stderr
    assert "| arm | n | test/acc | cl.forgetting (%) |" in result.stdout
    assert result.stdout.index("| b | 3 |") < result.stdout.index("| a | 3 |")


def test_runs_that_disagree_on_the_report_get_the_default_table(study, capsys):
    summary = study / "arm=a-0" / "summary.json"
    data = json.loads(summary.read_text())
    data["config"]["report"] = {"metric": "test/acc"}
    summary.write_text(json.dumps(data))
    _, text = aggregate(load_runs(study), None, None)
    assert "| arm | n | test/acc | cl.avg_acc | cl.forgetting |" in text
    assert "different `report` settings" in capsys.readouterr().err


# -- points of the sweep without a completed result ---------------------------------------------------
SWEEP_ARGS = ["+experiment=rigl_digits", "sparsity.density=0.05,0.1,0.2,0.3", "seed=0,1,2", "sweep_name=dens"]


def write_multirun_yaml(sweep, task, sweeper="hydra._internal.core_plugins.basic_sweeper.BasicSweeper"):
    from omegaconf import OmegaConf

    OmegaConf.save({"hydra": {"sweeper": {"_target_": sweeper}, "overrides": {"task": task}}}, sweep / "multirun.yaml")


def test_every_point_of_the_sweep_without_a_completed_result_is_listed_by_status(sweep):
    write_multirun_yaml(sweep, SWEEP_ARGS)
    planned = planned_points(sweep)
    assert len(planned) == 12
    unfinished = dict(unfinished_points(planned, load_runs(sweep)))
    assert unfinished == {
        "experiment=rigl_digits seed=2 sparsity.density=0.1": NOT_STARTED,
        "experiment=rigl_digits seed=0 sparsity.density=0.2": "failed",
        "experiment=rigl_digits seed=1 sparsity.density=0.2": "interrupted",
        "experiment=rigl_digits seed=2 sparsity.density=0.2": NOT_STARTED,
        "experiment=rigl_digits seed=0 sparsity.density=0.3": NOT_STARTED,
        "experiment=rigl_digits seed=1 sparsity.density=0.3": NOT_STARTED,
        "experiment=rigl_digits seed=2 sparsity.density=0.3": NOT_STARTED,
    }
    _, text = aggregate(load_runs(sweep), "test/acc", None, planned=planned)
    assert "7 of 12 sweep points have no completed result:" in text
    assert "  failed: experiment=rigl_digits seed=0 sparsity.density=0.2" in text.splitlines()


def test_points_are_not_listed_where_the_sweeper_samples_them(sweep):
    write_multirun_yaml(
        sweep, ["hparams_search=optuna"], "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    )
    assert planned_points(sweep) is None


@pytest.mark.e2e  # a CLI subprocess
def test_strict_exits_1_while_a_point_has_no_completed_result(sweep, tmp_path):
    write_multirun_yaml(sweep, SWEEP_ARGS)
    cmd = [str(sweep), "--out", str(tmp_path / "agg")]
    relaxed = aggregate_cli(*cmd)
    assert relaxed.returncode == 0 and "7 of 12 sweep points have no completed result" in relaxed.stdout
    strict = aggregate_cli(*cmd, "--strict")
    assert strict.returncode == 1 and "--strict: 7 sweep point(s) without a completed result" in strict.stderr
    write_multirun_yaml(sweep, ["+experiment=rigl_digits", "sparsity.density=0.05", "seed=0,1,2"])
    done = aggregate_cli(*cmd, "--strict")
    assert done.returncode == 0 and "no completed result" not in done.stdout


def test_a_running_status_counts_as_running_only_while_its_process_holds_the_run(sweep):
    from sparseforge.utils.run_lock import RunLock

    lock = RunLock.acquire(sweep / "d0.2-s1")
    try:
        assert {r.run_dir.rsplit("/", 1)[1]: r.status for r in load_runs(sweep)}["d0.2-s1"] == "running"
    finally:
        lock.release()
    assert {r.run_dir.rsplit("/", 1)[1]: r.status for r in load_runs(sweep)}["d0.2-s1"] == "interrupted"
