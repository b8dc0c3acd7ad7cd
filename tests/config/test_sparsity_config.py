"""Sparsity configs: bad values fail before training with one line; the presets build and run."""

from __future__ import annotations

import json

import pytest

from sparseforge.errors import ConfigError
from sparseforge.train import build, train
from tests.helpers import fake_data
from tests.helpers.cli import run_cli
from tests.helpers.config import compose_config

BAD = [
    (["sparsity.density=0"], "sparsity.density", "0 < density <= 1"),
    (["sparsity.density=1.5"], "sparsity.density", "0 < density <= 1"),
    (["sparsity.distribution=erdos"], "sparsity.distribution", "uniform, er, erk"),
    (["sparsity.update_rule=snip"], "sparsity.update_rule", "dense, momentum, rigl, set, static, tdm, unfired"),
    (["sparsity.placement=best"], "sparsity.placement", "random, magnitude"),
    (["sparsity.drop_schedule=exp"], "sparsity.drop_schedule", "constant, cosine, linear"),
    (["sparsity.schedule_scope=epoch"], "sparsity.schedule_scope", "run, task"),
    (["sparsity.drop_fraction=1.0"], "sparsity.drop_fraction", "0 <= drop_fraction < 1"),
    (["sparsity.drop_fraction=-0.1"], "sparsity.drop_fraction", "0 <= drop_fraction < 1"),
    (["sparsity.end_fraction=0"], "sparsity.end_fraction", "0 < end_fraction <= 1"),
    (["sparsity.end_fraction=1.2"], "sparsity.end_fraction", "0 < end_fraction <= 1"),
    (["sparsity.delta_t=0"], "sparsity.delta_t", "delta_t >= 1"),
    (["sparsity.include=[blocks.*]"], "sparsity.include", "names such as features.1"),
    (["sparsity.density=0.0001"], "sparsity.density", "density >= "),
    (["sparsity=dense", "sparsity.density=0.5"], "sparsity.density", "density: 1.0"),
]


@pytest.mark.parametrize(("overrides", "key", "allowed"), BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_values_fail_in_build_naming_the_key_and_what_is_allowed(tmp_path, overrides, key, allowed):
    cfg = compose_config([*overrides, "logger=none"], output_dir=tmp_path / "run")
    with pytest.raises(ConfigError) as err:
        build(cfg)
    message = str(err.value)
    assert message.startswith(f"config error: {key}:") and allowed in message
    assert "\n" not in message


def test_a_density_that_empties_a_layer_names_it_and_the_smallest_workable_density(tmp_path):
    cfg = compose_config(["sparsity.density=0.0001", "logger=none"], output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"leaves layer '[\w.]+' \(\d+ weights\) with no weight under erk"):
        build(cfg)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["sparsity.distribution=erdos"], "sparsity.distribution"),
        (["sparsity.delta_t=0"], "sparsity.delta_t"),
        (["sparsity.include=[nothing*]"], "sparsity.include"),
        (["sparsity.density=0.00001"], "sparsity.density"),
    ],
)
def test_the_cli_prints_one_error_line_and_exits_non_zero(tmp_path, args, key):
    result = run_cli([*args, "logger=none", f"hydra.run.dir={tmp_path / 'run'}", "print_config=false"])
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: config error: {key}:"), result.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


@pytest.mark.slow
@pytest.mark.parametrize(
    ("preset", "num_classes", "rule", "first_layer_dense"),
    [
        ("random_pruning_cifar10", 10, "static", False),
        ("rigl_cifar100", 100, "rigl", True),
        ("set_cifar100", 100, "set", True),
    ],
)
def test_presets_build_and_run_one_batch(tmp_path, data_dir, preset, num_classes, rule, first_layer_dense):
    fake_data.write_cifar(data_dir, num_classes, n_train=300, n_test=200)
    run_dir = tmp_path / "run"
    overrides = [
        f"+experiment={preset}",
        "debug=fdr",
        "logger=none",
        "data.batch_size=16",
        f"paths.data_dir={data_dir}",
        "dataset.verify_checksums=false",
    ]
    train(compose_config(overrides, output_dir=run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    sparsity = summary["sparsity"]
    assert summary["status"] == "completed" and sparsity["update_rule"] == rule
    assert ("conv1" in sparsity["dense_layers"]) is first_layer_dense
    assert ("conv1" in sparsity["layers"]) is not first_layer_dense
    n_sparse = summary["config"]["sparsity"]["density"]
    assert abs(sparsity["density"] - n_sparse) < len(sparsity["layers"]) / 1e6
    assert summary["flops"]["inference_relative_to_dense"] < 0.5
    if preset == "random_pruning_cifar10":  # upstream's 45k/5k split, model selection and reflect padding
        assert summary["validation"]["fraction"] == 0.1 and 25 <= summary["validation"]["n_val"] <= 35
        assert summary["metrics"]["best_val/epoch"] == 0 and "test/acc_at_best_val" in summary["metrics"]
        assert summary["config"]["dataset"]["train_transform"][0]["padding_mode"] == "reflect"
