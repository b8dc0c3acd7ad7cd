"""The presets configured as Mammoth's benchmarks: they compose to Mammoth's settings (best
arguments per method from configs/best_args/) and run their whole task sequence with debug=fdr."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sparseforge.config import config_dir
from sparseforge.train import train
from tests.helpers.cl import QUIET, one_thread, summary
from tests.helpers.config import compose_config
from tests.helpers.fake_data import write_mnist_like

# method: (lr, alpha, beta, draw size), Mammoth's utils/best_args.py for seq-mnist, buffer 500
SEQ_MNIST = {"er": (0.1, None, None, 10), "derpp": (0.03, 1.0, 0.5, 10), "der": (0.03, 1.0, None, 128)}


@pytest.mark.parametrize("method", ["er", "derpp", "der", "finetune"])
def test_mammoth_seq_mnist_composes_as_mammoth_runs_it(method):
    cfg = compose_config(["+experiment=mammoth_seq_mnist", f"method={method}"])
    assert cfg.dataset._target_.endswith("MNIST") and cfg.dataset.normalize is False
    assert cfg.model.name == "mlp" and list(cfg.model.hidden_sizes) == [100, 100] and cfg.model.init == "xavier"
    assert cfg.scenario._target_.endswith("ClassIncremental") and cfg.scenario.n_tasks == 5
    assert cfg.scenario.epochs_per_task == 1 and cfg.data.batch_size == 10
    assert cfg.optimizer.momentum == 0 and cfg.optimizer.weight_decay == 0
    assert cfg.sparsity.update_rule == "dense" and cfg.sparsity.density == 1.0
    if method == "finetune":
        assert cfg.optimizer.lr == 0.03  # Mammoth's sgd
        return
    lr, alpha, beta, draw = SEQ_MNIST[method]
    assert cfg.optimizer.lr == lr and cfg.method.buffer_size == 500 and cfg.method.minibatch_size == draw
    assert cfg.method.get("alpha") == alpha and cfg.method.get("beta") == beta


def test_the_command_line_overrides_the_best_args():
    cfg = compose_config(["+experiment=mammoth_seq_mnist", "method=derpp", "method.alpha=0.2", "optimizer.lr=0.5"])
    assert cfg.method.alpha == 0.2 and cfg.optimizer.lr == 0.5 and cfg.method.beta == 0.5


@pytest.mark.parametrize("preset, transform", [("perm_mnist", "PixelPermutation"), ("rot_mnist", "Rotation")])
def test_domain_il_presets_compose_as_mammoths(preset, transform):
    cfg = compose_config([f"+experiment={preset}", "method=derpp"])
    scenario = cfg.scenario
    assert scenario._target_.endswith("DomainIncremental") and scenario.n_tasks == 20
    assert scenario.task_transform._target_.endswith(transform) and scenario.epochs_per_task == 1
    if preset == "rot_mnist":
        assert list(scenario.task_transform.degrees) == [0, 180]
    assert cfg.data.batch_size == 128 and cfg.dataset.normalize is False and cfg.model.init == "xavier"
    alpha, beta = (1.0, 0.5) if preset == "perm_mnist" else (0.5, 1.0)  # Mammoth's best args, buffer 500
    assert cfg.optimizer.lr == 0.2 and cfg.method.alpha == alpha and cfg.method.beta == beta
    assert cfg.method.minibatch_size == 128


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset, method",
    [("mammoth_seq_mnist", "er"), ("mammoth_seq_mnist", "derpp"), ("perm_mnist", "er"), ("rot_mnist", "derpp")],
)
def test_the_presets_run_with_debug_fdr(tmp_path, data_dir, preset, method):
    write_mnist_like(data_dir, n_train=200, n_test=100)
    overrides = [
        f"+experiment={preset}",
        f"method={method}",
        *QUIET,
        f"paths.data_dir={data_dir}",
        "method.buffer_size=50",
        "callbacks=none",
        "debug=fdr",
    ]
    with one_thread():
        train(compose_config(overrides, output_dir=tmp_path / "run"))
    s = summary(tmp_path / "run")
    n_tasks = 5 if preset == "mammoth_seq_mnist" else 20
    assert s["status"] == "completed" and s["cl"]["completed_tasks"] == n_tasks
    assert all(v is not None for v in s["cl"]["acc_matrix"][-1])
    assert s["replay"]["capacity"] == 50 and s["replay"]["bytes"] > 0


# Mammoth's utils/best_args.py for the regularisation, distillation and A-GEM baselines (buffer 500
# where a buffer applies), written out here so that a file that drifts from Mammoth fails.
NEW_BASELINES = {
    ("mammoth_seq_mnist", "ewc_on"): {"optimizer.lr": 0.03, "method.e_lambda": 90, "method.gamma": 1.0},
    ("mammoth_seq_mnist", "si"): {"optimizer.lr": 0.1, "method.c": 1.0, "method.xi": 0.9},
    ("mammoth_seq_mnist", "lwf"): {
        "optimizer.lr": 0.03,
        "optimizer.weight_decay": 5e-4,
        "method.alpha": 1.0,
        "method.temperature": 2.0,
    },
    ("mammoth_seq_mnist", "icarl"): {"optimizer.lr": 0.1, "optimizer.weight_decay": 2e-5, "method.buffer_size": 500},
    ("mammoth_seq_mnist", "agem"): {"optimizer.lr": 0.1, "method.minibatch_size": 128, "method.buffer_size": 500},
    ("perm_mnist", "ewc_on"): {"optimizer.lr": 0.1, "method.e_lambda": 0.7, "method.gamma": 1.0},
    ("perm_mnist", "si"): {"optimizer.lr": 0.1, "method.c": 0.5, "method.xi": 1.0},
    ("perm_mnist", "agem"): {"optimizer.lr": 0.1, "method.minibatch_size": 128, "method.buffer_size": 500},
    ("rot_mnist", "ewc_on"): {"optimizer.lr": 0.1, "method.e_lambda": 0.7, "method.gamma": 1.0},
    ("rot_mnist", "si"): {"optimizer.lr": 0.1, "method.c": 1.0, "method.xi": 1.0},
    ("rot_mnist", "agem"): {"optimizer.lr": 0.3, "method.minibatch_size": 128, "method.buffer_size": 500},
}


@pytest.mark.parametrize("preset, method", sorted(NEW_BASELINES), ids=lambda v: v)
def test_the_baselines_compose_with_mammoths_best_args(preset, method):
    cfg = compose_config([f"+experiment={preset}", f"method={method}"])
    assert cfg.method._target_.startswith(f"sparseforge.methods.{method}.")
    for dotted, value in NEW_BASELINES[preset, method].items():
        group, key = dotted.split(".")
        assert cfg[group][key] == pytest.approx(value), dotted
    batch = 10 if preset == "mammoth_seq_mnist" else 128
    assert cfg.data.batch_size == batch and cfg.optimizer.momentum == 0 and cfg.model.init == "xavier"
    clipped = method == "si"  # Mammoth's SI clips gradient values at 1 on every benchmark
    assert (cfg.trainer.gradient_clip_val == 1.0) is clipped
    assert (cfg.trainer.gradient_clip_algorithm == "value") is clipped
    if method != "lwf":
        assert cfg.optimizer.weight_decay == (2e-5 if method == "icarl" else 0.0)


def test_without_best_args_a_baseline_keeps_the_presets_sgd():
    cfg = compose_config(["+experiment=perm_mnist", "method=si", "~best_args"])
    assert cfg.optimizer.lr == 0.2 and cfg.trainer.gradient_clip_val is None


@pytest.mark.parametrize(
    "path", sorted((Path(config_dir()) / "best_args").rglob("*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}"
)
def test_every_best_args_file_is_picked_by_its_preset_and_method(path):
    values = yaml.safe_load(path.read_text())
    assert "best_args.py" in path.read_text()  # names its source
    cfg = compose_config([f"+experiment={path.parent.name}", f"method={path.stem}"])
    for group, settings in values.items():
        for key, value in settings.items():
            assert cfg[group][key] == value, f"{group}.{key}"
