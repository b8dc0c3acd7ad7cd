"""The SparCL presets: the released recipe composes as documented and runs end to end on tiny
files in the real on-disk formats (debug=fdr: one batch per task through the whole sequence)."""

from __future__ import annotations

import json

import pytest

from sparseforge.sparsity.targets import select_layers
from sparseforge.train import build, train
from tests.helpers.cli import run_cli
from tests.helpers.config import compose_config
from tests.helpers.fake_data import write_cifar, write_tiny_imagenet

BLOCK_CONVS = [f"layer{s}.{b}.conv{c}" for s in range(1, 5) for b in range(2) for c in (1, 2)]
PRESETS = {  # preset -> (tasks, classes per task, epochs per task, writer of tiny files, extra overrides)
    "sparcl_cifar10": (5, 2, 50, lambda d: write_cifar(d, 10, n_train=600), ["dataset.verify_checksums=false"]),
    "sparcl_cifar100": (10, 10, 50, lambda d: write_cifar(d, 100, n_train=600), ["dataset.verify_checksums=false"]),
    "sparcl_tinyimagenet": (10, 20, 100, lambda d: write_tiny_imagenet(d, per_class_train=3), []),
}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_is_the_released_recipe(preset, tmp_path):
    n_tasks, per_task, epochs, writer, extra = PRESETS[preset]
    writer(tmp_path)
    cfg = compose_config([f"+experiment={preset}", f"paths.data_dir={tmp_path}", *extra], tmp_path / "run")
    assert cfg.scenario.n_tasks == n_tasks and cfg.scenario.epochs_per_task == epochs
    assert cfg.model.name == "resnet18_cifar" and cfg.model.width == 64
    m, sp, opt = cfg.method, cfg.sparsity, cfg.optimizer
    assert m._target_ == "sparseforge.methods.sparcl.SparCL" and m.base == "derpp"
    assert (m.buffer_size, m.alpha, m.beta, m.restrict_current_ce, m.replay_first_task) == (500, 0.1, 0.5, True, False)
    assert list(m.ddr.removal_epochs) == [5, 10, 15, 20] and m.ddr.remove_fraction == 0.3
    assert (m.dgm.gradient_sparsity, m.dgm.relative_to.value, m.dgm.refresh_every) == (0.8, "layer", 30)
    assert (sp.update_rule, sp.density, sp.distribution, sp.placement) == ("tdm", 0.25, "uniform", "magnitude")
    assert sp.tdm.every_epochs == 5 and list(sp.tdm.phase_epochs) == [5, epochs - 5]
    assert list(sp.tdm.prune_offsets) == [0.0, -0.01, 0.0] and list(sp.tdm.grow_offsets) == [0.01, 0.0, 0.0]
    assert (opt.lr, opt.momentum, opt.weight_decay) == (0.03, 0.0, 0.0) and not cfg.lr_scheduler  # constant LR
    assert cfg.data.batch_size == 32 and m.minibatch_size == 32 and cfg.data.drop_last
    run = build(cfg)
    assert [len(t.classes) for t in run.datamodule.tasks] == [per_task] * n_tasks
    # the 16 residual-block 3x3 convs of the full-width ResNet-18 are the sparse layers
    layers = select_layers(run.method.model, list(sp.include), sp.exclude)
    assert list(layers) == BLOCK_CONVS
    assert sum(layer.weight.numel() for layer in layers.values()) == 10_985_472


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_runs_the_whole_sequence_on_tiny_files(preset, tmp_path):
    n_tasks, _, _, writer, extra = PRESETS[preset]
    writer(tmp_path)
    # width 8: the same network and code path at a CPU-friendly size (the full width is built above)
    overrides = [
        f"+experiment={preset}",
        "debug=fdr",
        "model.width=8",
        f"paths.data_dir={tmp_path}",
        "data.eval_batch_size=64",
        *extra,
    ]
    run_dir = tmp_path / "run"
    train(compose_config(overrides, run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["cl"]["completed_tasks"] == n_tasks
    assert summary["sparsity"]["update_rule"] == "tdm" and len(summary["sparsity"]["layer_nnz"]) == 16
    # one epoch per task: TDM's task-start growth (+1% of each layer) happened at every task
    assert [r["epoch_in_task"] for r in summary["sparcl"]["epochs"]] == [0] * n_tasks
    assert summary["sparsity"]["updates"] == n_tasks
    assert 0 < summary["flops"]["train_relative_to_dense"] < 1
    assert summary["sparcl"]["dgm"]["refreshes"] == n_tasks


@pytest.mark.slow
def test_cli_runs_the_cifar100_preset_as_documented(tmp_path):
    write_cifar(tmp_path, 100, n_train=600)
    run_dir = tmp_path / "run"
    proc = run_cli(
        [
            "+experiment=sparcl_cifar100",
            "debug=fdr",
            "model.width=8",
            f"paths.data_dir={tmp_path}",
            "dataset.verify_checksums=false",
            "data.eval_batch_size=64",
            f"hydra.run.dir={run_dir}",
        ],
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["cl"]["n_tasks"] == 10
    assert summary["metrics"]["flops/train_relative_to_dense"] == summary["flops"]["train_relative_to_dense"]


@pytest.mark.e2e  # a CLI subprocess
def test_a_bad_sparcl_value_is_one_line_naming_the_key(tmp_path):
    write_cifar(tmp_path, 10, n_train=600)
    proc = run_cli(
        [
            "+experiment=sparcl_cifar10",
            "method.ddr.removal_epochs=[0,5]",
            f"paths.data_dir={tmp_path}",
            "dataset.verify_checksums=false",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: config error: method.ddr.removal_epochs:")
