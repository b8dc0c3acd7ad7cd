"""A study end to end, as a user runs it: ``python train.py -m +study=...`` (2 arms x 2 seeds on
the embedded digits with debug=fdr), ``sparseforge-aggregate`` (one row per arm in the study's
order, n = the seeds, the study's columns), the sbatch plan (the multirun's directories), a
planned line run by ``sparseforge-sweep run`` (one run, in its point's directory), and a rerun
without ``-m`` (the study is a sweep by itself and skips what completed)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from sparseforge.sweeps.plan import prepare_run_points
from tests.helpers.cli import REPO, run_cli

ARMS = ["finetune", "er"]  # the study's order (not alphabetical)
STUDY = [
    "+study=cl_split_mnist",
    "dataset=digits",
    "debug=fdr",
    "seed=0,1",  # replace the study's axes: 2 seeds, 2 of its 4 arms
    "arm=" + ",".join(f"cl_split_mnist/{a}" for a in ARMS),
    "print_config=false",
]


def _tool(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_study_runs_aggregates_and_plans_the_same_points(tmp_path):
    args = [*STUDY, f"paths.log_dir={tmp_path}"]
    result = run_cli(["-m", *args])
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "multiruns" / "cl_split_mnist"
    summaries = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert len(summaries) == 4 and all(s["status"] == "completed" for s in summaries.values())
    arm_of = {name: s["config"]["method"]["_target_"].rsplit(".", 1)[1] for name, s in summaries.items()}
    assert sorted(arm_of.values()) == ["ER", "ER", "Finetune", "Finetune"]

    table = _tool("sparseforge.sweeps.aggregate", str(sweep))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == "common: dataset=digits debug=fdr study=cl_split_mnist"
    header = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert header == ["arm", "n", "cl.avg_acc (%)", "cl.avg_acc_task_il (%)", "cl.forgetting (%)"]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[4:6]]
    assert [(r[0], r[1]) for r in rows] == [("finetune", "2"), ("er", "2")]  # one row per arm, n = seeds
    for row, target in zip(rows, ("Finetune", "ER"), strict=True):
        accs = [100 * s["cl"]["avg_acc"] for name, s in summaries.items() if arm_of[name] == target]
        assert row[2] == f"{statistics.fmean(accs):.2f} ± {statistics.stdev(accs):.2f}"
    assert (sweep / "aggregate" / "runs.csv").is_file() and (sweep / "aggregate" / "cl_metrics.png").is_file()

    # the sbatch path plans exactly these points, in these directories, all already completed
    planned = prepare_run_points(args)
    assert sorted(p.run_dir.name for p in planned) == sorted(summaries)
    assert all(p.finished is not None for p in planned)
    lines_file = tmp_path / "sweep.txt"
    plan = _tool("sparseforge.sweeps.cli", "plan", "--all", "-o", str(lines_file), *args)
    assert plan.returncode == 0, plan.stderr
    assert len(lines_file.read_text().splitlines()) == 4 and "note: no sweep_name" not in plan.stderr
    one = _tool("sparseforge.sweeps.cli", "run", str(lines_file), "0")
    assert one.returncode == 0, one.stderr[-3000:]
    assert "already completed: skipped" in one.stdout + one.stderr  # a single run in its point's directory
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == sorted(
        [*summaries, "aggregate"]
    )

    rerun = run_cli(args)  # no -m: the study is a sweep by itself
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (rerun.stdout + rerun.stderr).count("already completed: skipped") == 4
