"""SHARP through the real config and Lightning: freezing under any optimizer, exact resume,
recent-class replay, memory accounting, presets, blurry CIFAR, configuration errors."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch

from sparseforge.continual.scenarios import Blurry
from sparseforge.errors import ConfigError
from sparseforge.train import train
from tests.helpers.config import compose_config
from tests.helpers.fake_data import write_cifar, write_mnist_like

BASE = [
    "dataset=mnist",
    "dataset.download=false",
    "model=sharp_mnistlike",
    "method=sharp",
    "sparsity=dense",
    "optimizer=adadelta",
    "logger=none",
    "data.batch_size=32",
    "scenario.n_tasks=5",
    "trainer.enable_progress_bar=false",
]


def _run(tmp_path, data_dir, overrides, name="run"):
    cfg = compose_config([*BASE, f"dataset.root={data_dir}", *overrides], output_dir=tmp_path / name)
    metrics = train(cfg)
    return metrics, json.loads((tmp_path / name / "summary.json").read_text())


def _checkpoint(tmp_path, name="run"):
    return torch.load(tmp_path / name / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.fixture
def mnist(data_dir):
    return write_mnist_like(data_dir, n_train=400, n_test=100)


def _frozen_rows(ckpt):
    """Per weight layer: the frozen units (ranks from the checkpoint) and their weights and biases."""
    sharp = ckpt["method_state"]["sharp"]
    weights = ckpt["state_dict"]
    rows = {}
    for name, ranks in sharp["ranks"].items():
        early = name.startswith("conv_early")
        frozen = ranks > 1 if early else ranks > 2  # m = 1, activation replay
        rows[name] = (frozen, weights[f"model.{name}.weight"][frozen], weights[f"model.{name}.bias"][frozen])
    return rows


@pytest.mark.slow
@pytest.mark.parametrize(
    "optimizer",
    [
        ["optimizer=adadelta"],
        ["optimizer=sgd", "optimizer.lr=0.05", "optimizer.momentum=0.9", "optimizer.weight_decay=0.01"],
    ],
    ids=["adadelta", "sgd_momentum_wd"],
)
def test_frozen_units_keep_their_incoming_weights(tmp_path, mnist, optimizer):
    common = ["scenario.epochs_per_task=2", "method.phase_epochs=1", "method.max_phases=2", "run_name=freeze"]
    common += [*optimizer, "trainer.gradient_clip_val=0.5"]
    _run(tmp_path, mnist, [*common, "trainer.max_epochs=4"])  # tasks 0 and 1
    before = _frozen_rows(_checkpoint(tmp_path))
    assert any(bool(f.any()) for name, (f, _, _) in before.items() if not name.startswith("conv_early"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    _run(tmp_path, mnist, [*common, "trainer.max_epochs=6", f"ckpt_path={last}"])  # task 2
    ckpt = _checkpoint(tmp_path)
    moved = False
    for name, (frozen, weight, bias) in before.items():
        now = ckpt["state_dict"][f"model.{name}.weight"]
        assert torch.equal(now[frozen], weight), name
        assert torch.equal(ckpt["state_dict"][f"model.{name}.bias"][frozen], bias), name
        moved |= bool((now[~frozen] != 0).any())
    assert moved  # the other units did train
    assert ckpt["method_state"]["sharp"]["position"] == {"episode": 2, "phase": 2}


def _assert_same_state(a, b):
    sa, sb = a["method_state"]["sharp"], b["method_state"]["sharp"]
    for name in sa["ranks"]:
        assert torch.equal(sa["ranks"][name], sb["ranks"][name]), name
        assert torch.equal(sa["masks"]["masks"][name], sb["masks"]["masks"][name]), name
    assert sa["position"] == sb["position"] and sa["replayed"] == sb["replayed"]
    assert a["method_state"]["flops"] == b["method_state"]["flops"]  # the same examples, charged once
    assert sa["stm"]["labels"] == sb["stm"]["labels"] and sa["stm"]["ranges"] == sb["stm"]["ranges"]
    assert all(torch.equal(x, y) for x, y in zip(sa["stm"]["codes"], sb["stm"]["codes"], strict=True))
    assert sa["ltm"]["labels"] == sb["ltm"]["labels"]
    for x, y in zip(sa["ltm"]["representations"], sb["ltm"]["representations"], strict=True):
        assert torch.equal(x, y)
    for x, y in zip(sa["ltm"]["unit_masks"], sb["ltm"]["unit_masks"], strict=True):
        assert torch.equal(x, y)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


class Preempted(Exception):
    pass


class PreemptAt(pl.Callback):
    """Kills the run at the start of an epoch, as a preemption would: no end-of-training hooks,
    so last.ckpt is the one written at the end of the previous epoch."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise Preempted(f"preempted at epoch {self.epoch}")


@pytest.mark.slow
@pytest.mark.parametrize(
    "phases",
    [["method.phase_epochs=2", "method.max_phases=1"], ["method.phase_epochs=1", "method.max_phases=2"]],
    ids=["mid_phase", "at_a_phase_start"],
)
def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path, mnist, phases):
    # 2 tasks x 2 epochs, preempted at epoch 3: the middle of task 1's only phase, or the start of
    # its second phase (rewiring and a fresh optimizer right after the resume)
    common = ["scenario.epochs_per_task=2", *phases, "trainer.max_epochs=4"]
    stop_epoch, position = 3, (1, 1)
    _run(tmp_path, mnist, [*common, "run_name=straight"], name="straight")
    preempt = [f"+callbacks.preempt._target_={__name__}.PreemptAt", f"+callbacks.preempt.epoch={stop_epoch}"]
    with pytest.raises(Preempted):
        _run(tmp_path, mnist, [*common, "run_name=cut", *preempt], name="cut")
    interrupted = _checkpoint(tmp_path, "cut")
    assert interrupted["method_state"]["sharp"]["position"] == dict(zip(("episode", "phase"), position, strict=True))
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    _run(tmp_path, mnist, [*common, "run_name=cut", f"ckpt_path={last}"], name="cut")
    _assert_same_state(_checkpoint(tmp_path, "straight"), _checkpoint(tmp_path, "cut"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "m,replay_layer,predict_with", [(1, "conv_early", "knn"), (2, "input", "linear")], ids=["activations", "raw"]
)
def test_recent_classes_only_are_replayed_and_memory_is_counted_in_bytes(
    tmp_path, mnist, m, replay_layer, predict_with
):
    _, summary = _run(
        tmp_path,
        mnist,
        ["scenario.epochs_per_task=1", "method.phase_epochs=1", "method.max_phases=1", f"method.stm_num_tasks={m}"]
        + [f"method.replay_layer={replay_layer}", f"method.predict_with={predict_with}"],
    )
    replayed = summary["replay"]["replayed_per_episode"]
    assert replayed["0"] == {}
    for episode in range(1, 5):
        recent = {2 * t + c for t in range(max(0, episode - m), episode) for c in (0, 1)}
        assert {int(c) for c in replayed[str(episode)]} == recent
        assert all(n > 0 for n in replayed[str(episode)].values())
    replay = summary["replay"]
    # 2 classes per task x m tasks x 25 samples x 784 values (16x7x7 activations, or the 1x28x28
    # pixels), one byte each, plus a float32 min and max per class
    assert replay["bytes"] == 2 * m * (25 * 784 + 8)
    assert replay["samples"] == 2 * m * 25 and replay["bytes_per_sample"] == 784
    assert replay["transient_bytes"] == 2 * (m + 1) * (25 * 784 + 8)  # before the oldest episode is evicted
    assert replay["ltm_bytes"] == 10 * 25 * 500 * 4 + 10 * 500  # float32 representations + unit masks
    assert replay["er_equivalent_samples"] == replay["bytes"] // 784
    layers = summary["sparsity"]["layers"]
    assert layers["conv_early.0"]["density"] == 1.0 and abs(layers["hidden.0"]["density"] - 0.4) < 0.01
    assert all(v["nonzero"] == v["target_nonzero"] for v in layers.values()) and summary["sharp"]["shortfall"] == {}
    assert summary["sharp"]["phases"] == 5 and summary["sharp"]["regrown_connections"]["idle"] > 0
    assert summary["sharp"]["predict_with"] == predict_with and summary["cl"]["completed_tasks"] == 5
    flops = summary["flops"]  # sparse layers (first conv dense) and a dense head: well below dense
    assert 0.3 < flops["train_relative_to_dense"] < 0.6 and 0.3 < flops["inference_relative_to_dense"] < 0.6


def test_a_non_sharp_model_is_one_config_error(tmp_path, mnist):
    with pytest.raises(ConfigError, match="model"):
        _run(tmp_path, mnist, ["model=mlp"])


def test_too_small_a_replay_batch_is_one_config_error(tmp_path, mnist):
    with pytest.raises(ConfigError, match="method.batch_size_memory"):
        _run(tmp_path, mnist, ["method.batch_size_memory=3"])
    assert not (tmp_path / "run").exists()  # pre-flight: nothing written


def test_a_sparsity_method_beside_sharp_is_one_config_error(tmp_path, mnist):
    with pytest.raises(ConfigError, match="sparsity=dense"):
        _run(tmp_path, mnist, ["sparsity=rigl"])


def test_bad_choices_are_refused_while_composing_naming_the_allowed_values(tmp_path, mnist):
    from hydra.errors import ConfigCompositionException

    for override, allowed in [
        ("method.replay_layer=hidden", "conv_early, input"),
        ("method.predict_with=softmax", "knn, linear"),
    ]:
        with pytest.raises(ConfigCompositionException) as err:
            _run(tmp_path, mnist, [override])
        assert f"expected one of [{allowed}]" in str(err.value.__cause__)
        assert f"full_key: {override.split('=')[0]}" in str(err.value.__cause__)


# -- presets ------------------------------------------------------------------------------------------
REFERENCE = {  # the reference's per-dataset settings (algorithms-sharp-pgf-nm.md, section 1.11)
    "sharp_mnist": dict(batch=256, T=0.1, phase_epochs=3, max_phases=10, floor=90, stm=25, ltm=25, k=5),
    "sharp_fmnist": dict(batch=1024, T=0.2, phase_epochs=3, max_phases=12, floor=75, stm=25, ltm=25, k=25),
    "sharp_emnist": dict(batch=256, T=0.1, phase_epochs=3, max_phases=15, floor=60, stm=25, ltm=25, k=5),
    "sharp_cifar10": dict(batch=256, T=0.2, phase_epochs=5, max_phases=15, floor=70, stm=200, ltm=50, k=5),
    "sharp_cifar100": dict(batch=64, T=0.05, phase_epochs=5, max_phases=15, floor=70, stm=100, ltm=50, k=5),
}


@pytest.mark.parametrize("preset", sorted(REFERENCE))
def test_presets_carry_the_reference_settings(preset):
    cfg = compose_config([f"+experiment={preset}"])
    ref, method = REFERENCE[preset], cfg.method
    assert cfg.optimizer._target_ == "torch.optim.Adadelta" and cfg.optimizer.lr == 1.0
    assert cfg.optimizer.weight_decay == 0.0 and not cfg.get("lr_scheduler")  # constant LR
    assert cfg.data.batch_size == ref["batch"] and method.temperature == ref["T"]
    assert (method.phase_epochs, method.max_phases) == (ref["phase_epochs"], ref["max_phases"])
    assert cfg.scenario.epochs_per_task == ref["phase_epochs"] * ref["max_phases"]
    assert method.min_activation_perc == ref["floor"] and method.knn_k == ref["k"]
    assert (method.stm_per_class, method.ltm_per_class) == (ref["stm"], ref["ltm"])
    assert method.density == 0.4 and method.dense_first_conv and method.predict_with == "knn"
    assert method.tau_param == 30 and method.stm_num_tasks == 1 and method.reinit_idle
    assert method.batch_size_memory is None  # = batch size, as in every script
    # the authors' code: fp32, drop_last, density falls on a regrowth shortfall, seed-shuffled subsets
    assert cfg.trainer.precision == "32-true" and cfg.data.drop_last
    assert method.regrow_into_training is False and method.sample_order == "shuffled"
    assert method.reinit_fan_out == "idle"  # the authors' re_initialize_u0
    if preset == "sharp_cifar10":
        assert list(cfg.dataset.std) == [0.2023, 0.1994, 0.2010]


FAKE = {
    "sharp_mnist": ("MNIST", 10),
    "sharp_fmnist": ("FashionMNIST", 10),
    "sharp_cifar10": ("cifar10", 10),
    "sharp_cifar100": ("cifar100", 100),
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(FAKE))
def test_presets_run_end_to_end_on_tiny_data(tmp_path, data_dir, preset):
    folder, classes = FAKE[preset]
    if folder.startswith("cifar"):  # VGG_Small is slow on a CPU: 2 images per class, small batches
        write_cifar(data_dir, num_classes=classes, n_train=2 * classes, n_test=classes)
        # CIFAR-100 replays 10 classes, which need 2 x 10 samples per step
        extra = ["dataset.verify_checksums=false", "data.eval_batch_size=16", f"data.batch_size={2 * classes // 5}"]
    else:
        write_mnist_like(data_dir, folder=folder, n_train=200, n_test=50)
        extra = []
    # VGG_Small takes seconds per batch on a shared CPU: the CIFAR presets stop after 2 tasks
    tasks = 2 if folder.startswith("cifar") else 5
    cfg = compose_config(
        [f"+experiment={preset}", "debug=fdr", f"trainer.max_epochs={tasks}"]
        + [f"dataset.root={data_dir}", "dataset.download=false", *extra],
        output_dir=tmp_path / "run",
    )
    train(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["cl"]["completed_tasks"] == tasks and not summary["cl"]["partial_last_task"]
    per_task = classes // cfg.scenario.n_tasks
    assert len(summary["replay"]["replayed_per_episode"][str(tasks - 1)]) == per_task


@pytest.mark.slow
def test_blurry_scenario_runs_on_cifar(tmp_path, data_dir):
    write_cifar(data_dir, num_classes=10, n_train=40, n_test=20)
    overrides = [
        "dataset=cifar10",
        "dataset.download=false",
        "dataset.verify_checksums=false",
        f"dataset.root={data_dir}",
        "model=sharp_vgg_small",
        "method=sharp",
        "sparsity=dense",
        "optimizer=adadelta",
        "scenario=blurry",
        "scenario.epochs_per_task=1",
        "method.phase_epochs=1",
        "method.max_phases=1",
        "method.stm_per_class=2",
        "method.ltm_per_class=2",
        "data.batch_size=8",
        "data.eval_batch_size=16",
        "task_loop.eval_limit_batches=1",
        "trainer.max_epochs=4",  # the first 4 episodes (VGG_Small is slow on a CPU)
        "logger=none",
        "trainer.enable_progress_bar=false",
    ]
    cfg = compose_config(overrides, output_dir=tmp_path / "run")
    train(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["cl"]["scenario"] == "blurry"
    assert summary["cl"]["completed_tasks"] == 4
    # the scenario's own episodes (same seed): each episode replays exactly its predecessor's
    # classes, a recurring class from its latest episode
    episodes = Blurry(class_per_episode=3).episode_classes(10, torch.Generator().manual_seed(cfg.seed))
    assert any(set(a) & set(b) for a, b in zip(episodes[:3], episodes[1:4], strict=True))  # classes recur
    replayed = summary["replay"]["replayed_per_episode"]
    for e in range(1, 4):
        assert {int(c) for c in replayed[str(e)]} == set(episodes[e - 1])
