"""The CL-with-DST presets (the release README's four runs): they compose to the released recipe
and run the whole task sequence on tiny files in the real on-disk formats (debug=fdr)."""

from __future__ import annotations

import itertools
import json

import pytest
from omegaconf import OmegaConf

from sparseforge.train import build, train
from tests.helpers.cli import run_cli
from tests.helpers.config import compose_config
from tests.helpers.fake_data import write_cifar, write_mini_imagenet

CIFAR100 = (lambda d: write_cifar(d, 100, n_train=600), ["dataset.verify_checksums=false"])
MINI = (lambda d: write_mini_imagenet(d, per_class_train=2, per_class_test=1), [])
PRESETS = {  # preset -> (tasks, distribution, growth, density, epochs per task, update every, batch, data)
    "cl_dst_cifar100_5": (5, "uniform", "momentum", 0.10, 100, 100, 64, CIFAR100),
    "cl_dst_cifar100_10": (10, "erk", "random", 0.20, 100, 400, 64, CIFAR100),
    "cl_dst_cifar100_20": (20, "uniform", "random_unfired", 0.05, 25, 100, 64, CIFAR100),
    "cl_dst_miniimagenet_10": (10, "erk", "gradient", 0.20, 100, 400, 128, MINI),
}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_is_the_released_recipe(preset, tmp_path):
    n_tasks, distribution, growth, density, epochs, every, batch, (writer, extra) = PRESETS[preset]
    writer(tmp_path)
    cfg = compose_config([f"+experiment={preset}", f"paths.data_dir={tmp_path}", *extra], tmp_path / "run")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert cfg.scenario.n_tasks == n_tasks and cfg.scenario.epochs_per_task == epochs
    assert cfg.scenario._target_.endswith("TaskIncremental") and cfg.model.name == "resnet18_cldst"
    m = cfg.method
    assert m._target_ == "sparseforge.methods.cl_dst.CLDST" and cfg.sparsity.update_rule == "dense"
    assert (m.distribution.value, m.growth.value, m.density, m.update_frequency) == (
        distribution,
        growth,
        density,
        every,
    )
    assert (m.drop.value, m.drop_rate, m.drop_rate_floor, m.keep.value, m.isolate) == (
        "magnitude",
        0.5,
        0.005,
        "final",
        True,
    )
    assert cfg.optimizer._target_ == "torch.optim.Adam" and (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (
        1e-3,
        0.0,
    )
    assert resolved["lr_scheduler"]["milestones"] == [epochs // 2, epochs * 3 // 4]  # 50% and 75% of each task
    assert resolved["lr_scheduler"]["gamma"] == 0.1 and cfg.task_loop.reset_optimizer_per_task
    assert cfg.data.batch_size == batch and cfg.data.eval_batch_size == 128
    assert cfg.trainer.gradient_clip_val is None
    run = build(cfg)
    assert [len(t.classes) for t in run.datamodule.tasks] == [100 // n_tasks] * n_tasks
    assert run.datamodule.tasks[1].classes == tuple(range(100 // n_tasks, 2 * 100 // n_tasks))  # natural order
    # every parameter of the network is a conv or linear weight: the task's density covers them all
    counts = run.method.layer_counts()
    total = sum(p.numel() for p in run.method.model.parameters())
    assert len(counts) == 21 and sum(counts.values()) == round(density * total)


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_runs_the_whole_sequence_on_tiny_files(preset, tmp_path):
    n_tasks, *_, (writer, extra) = PRESETS[preset]
    writer(tmp_path)
    # width 8: the same network and code path at a CPU-friendly size
    overrides = [f"+experiment={preset}", "debug=fdr", "model.width=8"]
    run_dir = tmp_path / "run"
    train(compose_config([*overrides, f"paths.data_dir={tmp_path}", *extra], run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["cl"]["completed_tasks"] == n_tasks
    assert [c["task"] for c in summary["sparsity"]["tasks"]] == list(range(n_tasks))
    assert summary["cl"]["bwt_task_il"] == 0.0


@pytest.mark.slow
def test_cli_runs_a_preset_as_documented(tmp_path):
    write_cifar(tmp_path, 100, n_train=600)
    run_dir = tmp_path / "run"
    proc = run_cli(
        [
            "+experiment=cl_dst_cifar100_10",
            "debug=fdr",
            "model.width=8",
            f"paths.data_dir={tmp_path}",
            "dataset.verify_checksums=false",
            f"hydra.run.dir={run_dir}",
        ],
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["cl"]["n_tasks"] == 10
    assert summary["metrics"]["test/acc"] == summary["cl"]["avg_acc_task_il"]


def compose_study(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from sparseforge.compose import register_all
    from sparseforge.config import config_dir
    from sparseforge.config.overrides import normalise_overrides

    register_all()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", normalise_overrides(overrides), return_hydra_config=True)


@pytest.mark.slow  # composes every point of a study
@pytest.mark.parametrize("study, points", [("cl_dst_isolated", 48), ("cl_dst_shared_mask", 48), ("cl_dst_finetune", 3)])
def test_the_reduced_study_is_three_sweeps_whose_points_all_compose(study, points):
    cfg = compose_study([f"+study={study}"])
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    assert len(list(itertools.product(*params.values()))) == points and params["seed"] == ["0", "1", "2"]
    assert cfg.sweep_name == "cl_dst_reduced" and cfg.dataset._target_ == "sparseforge.data.MNIST"
    assert cfg.scenario._target_.endswith("TaskIncremental") and cfg.scenario.epochs_per_task == 1
    for combo in itertools.product(*[v for k, v in params.items() if k != "seed"]):
        point = compose_study([f"+study={study}", *(f"{k}={v}" for k, v in zip(params, combo, strict=False))])
        if study == "cl_dst_isolated":
            assert point.method.update_frequency == 20 and point.sparsity.update_rule == "dense"
        elif study == "cl_dst_shared_mask":
            assert point.method._target_.endswith("Finetune") and point.sparsity.update_rule == combo[0]
            assert (point.sparsity.delta_t, point.sparsity.schedule_scope, point.sparsity.end_fraction) == (
                20,
                "task",
                1.0,
            )
