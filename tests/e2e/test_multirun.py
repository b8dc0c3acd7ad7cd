"""Local sweeps through Hydra's basic launcher and the Optuna sweeper: deterministic point
directories shared with the sbatch path, rerun skips finished points, the objective is the metric."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from sparseforge.sweeps.plan import prepare_run_points
from tests.helpers.cli import run_cli
from tests.helpers.config import compose_config

TINY = ["logger=csv", "sparsity=dense", "print_config=false", "trainer.enable_progress_bar=false"]


def summaries(sweep_dir):
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))}


@pytest.mark.slow
def test_basic_multirun_points_are_deterministic_and_a_rerun_skips_finished_ones(tmp_path):
    sweep = ["sweep_name=mr", f"paths.log_dir={tmp_path}", *TINY, "ckpt_path=auto"]
    result = run_cli(["-m", *sweep, "seed=0,1", "optimizer.lr=0.05,0.1"])
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = tmp_path / "multiruns" / "mr"
    first = summaries(sweep_dir)
    assert len(first) == 4 and all(s["status"] == "completed" for s in first.values())
    # the sbatch path (single runs with the same sweep_name) would use exactly these directories
    planned = prepare_run_points([*sweep, "seed=0,1", "optimizer.lr=0.05,0.1"])
    assert sorted(p.run_dir.name for p in planned) == sorted(first)
    for point in planned:
        assert first[point.run_dir.name]["seed"] == point.cfg.seed
        assert first[point.run_dir.name]["config"]["optimizer"]["lr"] == point.cfg.optimizer.lr

    mtimes = {name: (sweep_dir / name / "summary.json").stat().st_mtime_ns for name in first}
    rerun = run_cli(["-m", *sweep, "seed=0,1,2", "optimizer.lr=0.05,0.1"])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (rerun.stdout + rerun.stderr).count("already completed: skipped") == 4
    after = summaries(sweep_dir)
    assert len(after) == 6 and all(s["status"] == "completed" for s in after.values())
    assert {name: (sweep_dir / name / "summary.json").stat().st_mtime_ns for name in first} == mtimes
    assert {name: after[name] for name in first} == first


def test_sweep_name_groups_the_wandb_runs(tmp_path):
    cfg = compose_config(["sweep_name=dens", "+experiment=dense_mnist"], output_dir=tmp_path)
    assert cfg.logger.wandb.group == "dens"
    cfg = compose_config(["+experiment=dense_mnist"], output_dir=tmp_path)
    assert cfg.logger.wandb.group == "dense_mnist"


@pytest.mark.slow
def test_optuna_study_optimises_the_returned_metric(tmp_path):
    result = run_cli(
        [
            "hparams_search=optuna",
            "sweep_name=opt",
            f"paths.log_dir={tmp_path}",
            *TINY,
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=2",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = tmp_path / "multiruns" / "opt"
    trials = summaries(sweep_dir)
    assert len(trials) == 2 and all(s["status"] == "completed" for s in trials.values())
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    accs = {name: s["metrics"]["test/acc"] for name, s in trials.items()}
    assert best.best_value == max(accs.values())
    best_run = max(accs, key=accs.get)
    sampled = {
        o.split("=")[0]: o.split("=")[1] for o in OmegaConf.load(sweep_dir / best_run / ".hydra" / "overrides.yaml")
    }
    for key, value in best.best_params.items():
        assert float(sampled[key]) == pytest.approx(float(value))


@pytest.mark.slow
def test_a_bad_point_does_not_stop_the_sweep_and_the_aggregator_names_it(tmp_path):
    sweep = ["sweep_name=bad", f"paths.log_dir={tmp_path}", "ckpt_path=auto", "print_config=false", "logger=csv"]
    tiny = ["scenario=iid", "scenario.epochs_per_task=1", "trainer.enable_progress_bar=false"]
    result = run_cli(["-m", *sweep, *tiny, "sparsity.density=0.1,0,0.2"])
    assert result.returncode != 0  # the sweep is not a success ...
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = [x for x in result.stderr.splitlines() if "sparsity.density: must be in (0, 1]" in x and "point" in x]
    assert "sparsity.density=0" in line
    sweep_dir = tmp_path / "multiruns" / "bad"
    done = summaries(sweep_dir)  # ... but the points after the bad one ran
    assert sorted(s["config"]["sparsity"]["density"] for s in done.values()) == [0.1, 0.2]
    assert all(s["status"] == "completed" for s in done.values())

    aggregate = [sys.executable, "-m", "sparseforge.sweeps.aggregate", str(sweep_dir)]
    report = subprocess.run([*aggregate, "--strict"], capture_output=True, text=True, timeout=300)
    assert report.returncode == 1
    assert "1 of 3 sweep points have no completed result:" in report.stdout
    (missing,) = [x for x in report.stdout.splitlines() if x.startswith("  not started")]
    assert missing.endswith(" sparsity.density=0")
