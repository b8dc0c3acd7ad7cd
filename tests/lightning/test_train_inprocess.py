"""Training through the real config and train(): every dataset and model family (debug=fdr on
tiny files in the real formats), the summary.json contract, seeding, exact resume, W&B offline."""

from __future__ import annotations

import csv
import json
import math
import os
import signal

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from sparseforge.lightning.loggers import run_id_for
from sparseforge.methods.base import ContinualMethod
from sparseforge.train import train
from tests.helpers import fake_data
from tests.helpers.config import compose_config
from tests.helpers.wandb_records import logged_config, of_type, offline_run_dirs, records_when_finished

SUMMARY_KEYS = {"status", "seed", "metrics", "wall_time_s", "n_params", "config"}


def run(overrides, run_dir, data_dir=None):
    """train() on the real config. These tests are about the framework, so they train with the
    plain method (Finetune) unless they pick one: the default method may keep a replay buffer
    larger than the tiny datasets here."""
    extra = [f"paths.data_dir={data_dir}"] if data_dir is not None else []
    if not any(o.startswith("method=") for o in overrides):
        extra.append("method=finetune")
    metrics = train(compose_config([*overrides, *extra], output_dir=run_dir))
    return metrics, json.loads((run_dir / "summary.json").read_text())


def mlp_params(features: int, classes: int, hidden=(100, 100)) -> int:
    sizes = [features, *hidden, classes]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


# dataset option -> (writer of tiny files, extra overrides, classes, channels, image size)
DATASETS = {
    "digits": (None, [], 10, 1, 8),
    "mnist": (lambda d: fake_data.write_mnist_like(d, "MNIST"), [], 10, 1, 28),
    "fashion_mnist": (lambda d: fake_data.write_mnist_like(d, "FashionMNIST"), [], 10, 1, 28),
    "emnist_letters": (fake_data.write_emnist_letters, ["scenario.n_tasks=2"], 26, 1, 28),
    "cifar10": (lambda d: fake_data.write_cifar(d, 10), ["dataset.verify_checksums=false"], 10, 3, 32),
    "cifar100": (
        lambda d: fake_data.write_cifar(d, 100, n_train=300, n_test=200),
        ["dataset.verify_checksums=false"],
        100,
        3,
        32,
    ),
    "tiny_imagenet": (lambda d: fake_data.write_tiny_imagenet(d, per_class_train=1, per_class_val=1), [], 200, 3, 64),
}


@pytest.mark.parametrize("name", list(DATASETS))
def test_fdr_trains_every_dataset_through_the_whole_task_sequence(name, data_dir, tmp_path):
    writer, extra, classes, chans, size = DATASETS[name]
    if writer:
        writer(data_dir)
    metrics, summary = run([f"dataset={name}", "debug=fdr", "data.batch_size=16", *extra], tmp_path / "run", data_dir)
    assert summary["status"] == "completed"
    assert SUMMARY_KEYS <= set(summary)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    cl = summary["cl"]
    assert cl["completed_tasks"] == cl["n_tasks"] == (2 if name == "emnist_letters" else 5)
    # the MLP's size proves classes, channels and image size came from the dataset
    assert summary["n_params"] == mlp_params(chans * size * size, classes)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


MODELS = {
    "mlp": ["model=mlp"],
    "small_cnn": ["model=small_cnn"],
    "resnet18_cifar": ["model=resnet18_cifar", "model.width=8"],
    "timm_resnet18": ["model=timm", "model.name=resnet18"],
    "timm_vit_tiny": [
        "model=timm",
        "model.name=vit_tiny_patch16_224",
        "+model.kwargs.img_size=32",
        "+model.kwargs.patch_size=4",
    ],
}


@pytest.mark.parametrize("name", list(MODELS))
def test_fdr_trains_every_model_family(name, data_dir, tmp_path):
    fake_data.write_cifar(data_dir, 10)
    overrides = [
        "dataset=cifar10",
        "dataset.verify_checksums=false",
        "scenario=iid",
        "debug=fdr",
        "data.batch_size=8",
        *MODELS[name],
    ]
    metrics, summary = run(overrides, tmp_path / "run", data_dir)
    assert summary["status"] == "completed" and 0.0 <= metrics["test/acc"] <= 1.0
    assert summary["n_params"] > 0


def test_lightning_fast_dev_run_also_works(tmp_path):
    _, summary = run(["trainer.fast_dev_run=true", "logger=none"], tmp_path / "run")
    assert summary["status"] == "completed"
    assert (summary["cl"]["completed_tasks"], summary["cl"]["n_tasks"]) == (1, 5)  # stops after task 0


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
    base = ["logger=none", "callbacks=none", "scenario=iid", "scenario.epochs_per_task=2"]
    a, _ = run(base, tmp_path / "a")
    b, _ = run(base, tmp_path / "b")
    c, _ = run([*base, "seed=1"], tmp_path / "c")
    assert a == b
    assert a != c


def test_summary_contract(tmp_path):
    metrics, summary = run(["logger=csv", "seed=3", "scenario=iid", "scenario.epochs_per_task=1"], tmp_path / "run")
    assert summary["status"] == "completed" and summary["seed"] == 3
    assert summary["metrics"] == metrics and all(isinstance(v, float) for v in metrics.values())
    assert {"test/acc", "train/loss", "train/acc"} <= set(metrics)
    assert summary["n_params"] == mlp_params(64, 10)
    assert summary["config"]["seed"] == 3 and summary["config"]["dataset"]["root"]  # resolved, not ${...}
    assert "${" not in json.dumps(summary["config"])
    assert 0 < summary["wall_time_s"] < 120
    assert [p.name for p in (tmp_path / "run").glob(".summary.json.tmp*")] == []  # atomic: no leftovers


class _Boom(RuntimeError):
    pass


def test_failure_writes_a_failed_summary_and_finishes_wandb(tmp_path, monkeypatch):
    def explode(self, batch):
        raise _Boom("exploded in step")

    monkeypatch.setattr(ContinualMethod, "observe", explode)
    run_dir = tmp_path / "run"
    with pytest.raises(_Boom):
        run(["logger=wandb", "logger.wandb.mode=offline", "scenario=iid"], run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "exploded in step" in summary["error"]
    assert SUMMARY_KEYS <= set(summary)
    import wandb

    assert wandb.run is None  # finished, not left open for the next job
    (offline,) = offline_run_dirs(run_dir)
    (exit_record,) = of_type(records_when_finished(offline), "exit")
    assert exit_record.exit.exit_code == 1


def test_wandb_offline_run_holds_the_resolved_config(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [
        "logger=wandb",
        "logger.wandb.mode=offline",
        "logger.wandb.project=proj",
        "logger.wandb.job_type=unit",
        "tags=[t1,t2]",
        "+experiment=dense_mnist",
        "dataset=digits",
        "scenario.epochs_per_task=1",
    ]
    _, summary = run(overrides, run_dir)
    (offline,) = offline_run_dirs(run_dir)
    run_id = run_id_for(run_dir)
    assert offline.name.endswith(run_id)  # deterministic id, derived from the run directory
    records = records_when_finished(offline)
    (header,) = of_type(records, "run")
    r = header.run
    assert (r.run_id, r.project, r.run_group, r.job_type, list(r.tags)) == (
        run_id,
        "proj",
        "dense_mnist",
        "unit",
        ["t1", "t2"],
    )
    config = logged_config(records)
    for key in ("dataset", "model", "optimizer", "scenario", "trainer", "seed"):
        assert config[key] == summary["config"][key], key
    (exit_record,) = of_type(records, "exit")
    assert exit_record.exit.exit_code == 0
    assert (run_dir / "csv" / "metrics.csv").exists()  # the wandb option logs a CSV too


class _Crash(RuntimeError):
    pass


def crash_at_epoch(monkeypatch, epoch: int) -> None:
    """Make the next run die when it reaches ``epoch``, as a killed job would (after the
    checkpoint of the epoch before)."""
    original = ContinualMethod.on_train_epoch_start

    def maybe_crash(self):
        if self.current_epoch == epoch:
            raise _Crash(f"killed at epoch {epoch}")
        return original(self)

    monkeypatch.setattr(ContinualMethod, "on_train_epoch_start", maybe_crash)


def _epochs_logged(metrics_csv) -> list[int]:
    rows = list(csv.DictReader(open(metrics_csv)))
    return [int(float(r["epoch"])) for r in rows if r.get("train/acc")]


def _weights(ckpt) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def test_resume_continues_at_the_right_epoch_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    common = [
        "logger=csv",
        "scenario=iid",
        "scenario.epochs_per_task=4",
        "lr_scheduler=cosine",
        "seed=5",
        "sparsity=dense",
    ]
    full, _ = run(common, tmp_path / "full")

    part = tmp_path / "part"
    with monkeypatch.context() as m:
        crash_at_epoch(m, 2)
        with pytest.raises(_Crash):
            run(common, part)
    assert json.loads((part / "summary.json").read_text())["status"] == "failed"
    resumed, summary = run([*common, "ckpt_path=auto", "logger.csv.name=after_resume"], part)
    assert summary["resumed_from"] == str(part / "checkpoints" / "last.ckpt")
    assert _epochs_logged(part / "after_resume" / "metrics.csv") == [2, 3]  # only the epochs left
    assert _epochs_logged(part / "csv" / "metrics.csv") == [0, 1]
    # exact resume: the same weights and numbers as the uninterrupted run
    w_full, w_part = (
        _weights(tmp_path / "full" / "checkpoints" / "last.ckpt"),
        _weights(part / "checkpoints" / "last.ckpt"),
    )
    assert w_full.keys() == w_part.keys()
    assert all(torch.equal(w_full[k], w_part[k]) for k in w_full)
    assert resumed["test/acc"] == full["test/acc"]


def test_csv_log_survives_a_resume(tmp_path, monkeypatch):
    common = ["logger=csv", "scenario=iid", "scenario.epochs_per_task=3"]
    with monkeypatch.context() as m:
        crash_at_epoch(m, 1)
        with pytest.raises(_Crash):
            run(common, tmp_path / "r")
    run([*common, "ckpt_path=auto"], tmp_path / "r")
    assert _epochs_logged(tmp_path / "r" / "csv" / "metrics.csv") == [0, 1, 2]
    run(common, tmp_path / "r")  # a fresh run in the same directory replaces the old rows
    assert _epochs_logged(tmp_path / "r" / "csv" / "metrics.csv") == [0, 1, 2]


def test_dense_training_learns_digits(tmp_path):
    """The stack learns: plain dense iid training on digits reaches a sensible accuracy.

    The LR is annealed: at a constant 0.1 (momentum 0.9) the last epoch is still noisy, and the
    final accuracy ranged from 0.88 to 0.96 over seeds 0-3, and moved with the machine's float
    rounding; with cosine annealing it was 0.964 to 0.982 over seeds 0-5."""
    metrics, _ = run(
        [
            "logger=none",
            "callbacks=none",
            "scenario=iid",
            "scenario.epochs_per_task=5",
            "sparsity=dense",
            "lr_scheduler=cosine",
        ],
        tmp_path / "r",
    )
    assert metrics["test/acc"] > 0.95 and math.isfinite(metrics["train/loss"])


class SigtermAtStep(Callback):
    """Sends this process SIGTERM, as SLURM does to a preempted or requeued job."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_preempted_run_says_interrupted_and_resumes_to_completion(tmp_path):
    common = ["logger=none", "scenario=iid", "scenario.epochs_per_task=2", "sparsity=dense"]
    part = tmp_path / "part"
    sigterm = [f"+callbacks.sigterm._target_={__name__}.SigtermAtStep", "+callbacks.sigterm.step=60"]
    with pytest.raises(SystemExit) as stopped:  # Lightning's SIGTERMException, raised at the next step
        run([*common, *sigterm], part)
    assert stopped.value.code == 143  # 128 + SIGTERM: a preempted run is not a success
    summary = json.loads((part / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERMException" in summary["error"]
    _, resumed = run([*common, "ckpt_path=auto"], part)
    assert resumed["status"] == "completed" and resumed["resumed_from"] == str(part / "checkpoints" / "last.ckpt")


def test_a_run_cut_short_by_max_steps_is_stopped_early_and_auto_resume_finishes_it_exactly(tmp_path):
    common = ["logger=none", "scenario=iid", "scenario.epochs_per_task=3", "sparsity=dense", "seed=2"]
    straight, _ = run(common, tmp_path / "straight")
    run_dir = tmp_path / "run"
    _, cut = run([*common, "trainer.max_steps=50"], run_dir)  # 43 steps per epoch: stops in epoch 2
    assert cut["status"] == "stopped_early"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 43  # whole epochs
    resumed, finished = run([*common, "ckpt_path=auto"], run_dir)  # not skipped as if it had completed
    assert finished["status"] == "completed" and finished["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    # the interrupted epoch is replayed, not skipped: the same steps, weights and numbers
    assert (
        _weights(run_dir / "checkpoints" / "last.ckpt").keys()
        == _weights(tmp_path / "straight" / "checkpoints" / "last.ckpt").keys()
    )
    for key, value in _weights(tmp_path / "straight" / "checkpoints" / "last.ckpt").items():
        assert torch.equal(value, _weights(run_dir / "checkpoints" / "last.ckpt")[key]), key
    assert resumed == straight
    _, again = run([*common, "ckpt_path=auto"], run_dir)
    assert again["status"] == "completed" and again["started_at"] == finished["started_at"]  # now it is skipped
