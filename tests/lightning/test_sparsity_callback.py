"""The sparsity callback inside real training runs (Lightning, the composed config, digits)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from sparseforge.lightning.sparsity_callback import SparsityCallback, find_sparsifier
from sparseforge.train import build, train
from tests.helpers.config import compose_config


class InterruptAtEpoch(pl.Callback):
    """Simulates a job killed at the start of ``epoch`` (after the previous epoch's checkpoint)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated preemption")


def sparsity_state(ckpt: Path) -> dict:
    checkpoint = torch.load(ckpt, weights_only=False)
    [key] = [k for k in checkpoint["callbacks"] if "SparsityCallback" in k]
    return checkpoint["callbacks"][key], checkpoint["state_dict"]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_default_run_is_rigl_erk_at_density_0_1_and_reports_density_flops_and_a_plot(tmp_path):
    run_dir = tmp_path / "run"
    train(compose_config(["logger=csv"], output_dir=run_dir))
    summary = summary_of(run_dir)
    sparsity, flops = summary["sparsity"], summary["flops"]
    assert summary["config"]["sparsity"]["update_rule"] == "rigl"
    assert sparsity["distribution"] == "erk" and sparsity["target_density"] == 0.1
    state, weights = sparsity_state(run_dir / "checkpoints" / "last.ckpt")
    numel = {name: weights[f"model.{name}.weight"].numel() for name in sparsity["layers"]}
    nnz = {name: int(m.sum()) for name, m in state["masks"]["masks"].items()}
    assert nnz == sparsity["layer_nnz"]
    assert sum(nnz.values()) == math.floor(0.1 * sum(numel.values()) + 0.5)  # the budget, exactly
    assert sparsity["density"] == sum(nnz.values()) / sum(numel.values())
    for name, mask in state["masks"]["masks"].items():  # pruned weights are stored as exact zeros
        assert torch.count_nonzero(weights[f"model.{name}.weight"][~mask]) == 0
    assert 0 < flops["inference_relative_to_dense"] < 1 and 0 < flops["train_relative_to_dense"] < 1
    assert flops["train_total"] > 0 and flops["samples_trained"] > 0
    assert (run_dir / "layer_density.png").stat().st_size > 1000
    metrics = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "sparsity/density" in metrics and "flops/train_relative_to_dense" in metrics


def test_dense_runs_report_flops_at_relative_one(tmp_path):
    run_dir = tmp_path / "run"
    train(compose_config(["sparsity=dense", "logger=none", "debug=fdr"], output_dir=run_dir))
    summary = summary_of(run_dir)
    assert summary["sparsity"]["density"] == 1.0 and summary["sparsity"]["update_rule"] == "dense"
    assert summary["flops"]["train_relative_to_dense"] == 1.0
    assert summary["flops"]["inference_relative_to_dense"] == 1.0


@pytest.mark.slow
def test_resume_gives_identical_masks_and_identical_later_updates(tmp_path):
    overrides = [
        "scenario=iid",
        "method=finetune",
        "data.batch_size=128",
        "scenario.epochs_per_task=3",
        "sparsity.delta_t=3",
    ]
    overrides += ["logger=none", "seed=11"]  # 12 steps per epoch on digits
    straight = tmp_path / "straight"
    train(compose_config(overrides, output_dir=straight))

    resumed = tmp_path / "resumed"
    interrupt = [
        "+callbacks.interrupt._target_=tests.lightning.test_sparsity_callback.InterruptAtEpoch",
        "+callbacks.interrupt.epoch=1",
    ]
    with pytest.raises(RuntimeError, match="simulated preemption"):
        train(compose_config(overrides + interrupt, output_dir=resumed))
    partial, _ = sparsity_state(resumed / "checkpoints" / "last.ckpt")
    assert 0 < partial["updates_done"] < 8  # interrupted between updates
    train(compose_config([*overrides, "ckpt_path=auto"], output_dir=resumed))

    a, weights_a = sparsity_state(straight / "checkpoints" / "last.ckpt")
    b, weights_b = sparsity_state(resumed / "checkpoints" / "last.ckpt")
    assert a["updates_done"] == b["updates_done"] == 8  # 36 steps, ΔT 3, stop at 27
    assert a["history"] == b["history"]  # the same updates, at the same steps, moving the same counts
    for name in a["masks"]["masks"]:
        assert torch.equal(a["masks"]["masks"][name], b["masks"]["masks"][name]), name
        assert torch.equal(a["masks"]["fired"][name], b["masks"]["fired"][name]), name
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key
    assert summary_of(straight)["flops"]["train_total"] == summary_of(resumed)["flops"]["train_total"]


def test_task_scope_restarts_the_schedule_at_every_task_with_the_live_optimizer(tmp_path):
    cfg = compose_config(
        [
            "scenario=class_il",
            "scenario.epochs_per_task=2",
            "trainer.limit_train_batches=2",
            "sparsity.delta_t=1",
            "sparsity.schedule_scope=task",
            "logger=none",
        ],
        output_dir=tmp_path / "run",
    )
    run = build(cfg)
    run.trainer.fit(run.method, datamodule=run.datamodule)
    sp = find_sparsifier(run.trainer)
    # 4 steps per task, updates after local steps 1 and 2 (< 0.75 * 4), in each of the 5 tasks.
    assert [int(h[0]) for h in sp.history] == [4 * t + k for t in range(5) for k in (1, 2)]
    assert sp.schedule_start == 16 and sp.horizon == 4
    assert sp.optimizer is run.trainer.optimizers[0]  # the optimizer the task loop re-created
    sp.check()


def test_the_callback_exposes_the_engine_and_checks_layers_before_training(tmp_path):
    cfg = compose_config(["logger=none", "debug=fdr"], output_dir=tmp_path / "run")
    run = build(cfg)
    callback = next(c for c in run.trainer.callbacks if isinstance(c, SparsityCallback))
    assert callback.sparsifier is None  # built at fit start, from the model the trainer holds
    run.trainer.fit(run.method, datamodule=run.datamodule)
    assert find_sparsifier(run.trainer) is callback.sparsifier
    assert callback.sparsifier.model is run.method.model


@pytest.mark.slow
def test_wandb_gets_the_density_plot_and_table(tmp_path):
    run_dir = tmp_path / "run"
    train(compose_config(["logger=wandb", "logger.wandb.mode=offline", "debug=fdr"], output_dir=run_dir))
    media = [p.name for p in run_dir.rglob("*") if p.is_file() and "media" in p.parts]
    # W&B names media files after the last part of the key: sparsity/layer_density, sparsity/layers.
    assert any(name.startswith("layer_density_") and name.endswith(".png") for name in media), media
    assert any(name.startswith("layers_") and name.endswith(".table.json") for name in media), media
