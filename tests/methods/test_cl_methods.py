"""The CL baselines end to end through the real config, plus the task loop's reporting."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sparseforge.continual import metrics
from sparseforge.continual.buffer import bytes_per_sample
from sparseforge.errors import ConfigError
from sparseforge.train import build, train
from tests.helpers.cl import QUIET, one_thread, summary
from tests.helpers.cli import run_cli
from tests.helpers.config import compose_config
from tests.helpers.fake_data import write_cifar


def run(tmp_path: Path, overrides: list[str], name: str = "run") -> dict:
    with one_thread():
        train(compose_config([*QUIET, *overrides], output_dir=tmp_path / name))
    return summary(tmp_path / name)


# Method-specific overrides for the default split: GDumb's 256 retraining epochs per task are
# cut to keep the test short; online EWC's lambda and SI's c (Mammoth's Split-MNIST values, for
# SGD without momentum at lr 0.03-0.1) diverge with the default digits optimizer (lr 0.1,
# momentum 0.9), so those two run with plain SGD.
DEFAULT_SPLIT = {
    "finetune": [],
    "joint": [],
    "er": [],
    "er_ace": [],
    "der": [],
    "derpp": [],
    "ewc_on": ["optimizer.momentum=0"],
    "si": ["optimizer.momentum=0"],
    "lwf": [],
    "icarl": [],
    "agem": [],
    "gdumb": ["method.fitting_epochs=4"],
}
REPLAY = {"er", "er_ace", "der", "derpp", "agem", "gdumb", "icarl"}


@pytest.mark.parametrize("method", list(DEFAULT_SPLIT))
def test_every_method_runs_the_default_split(tmp_path, method):
    s = run(tmp_path, [f"method={method}", "callbacks=none", *DEFAULT_SPLIT[method]])
    cl = s["cl"]
    assert s["status"] == "completed" and cl["scenario"] == "class_il" and cl["n_tasks"] == 5
    assert {"acc_matrix", "avg_acc", "forgetting", "bwt", "scenario", "n_tasks"} <= cl.keys()
    R = cl["acc_matrix"]
    assert all(v is not None for v in R[-1]) and all(R[t][j] is None for t in range(5) for j in range(t + 1, 5))
    assert cl["avg_acc"] == pytest.approx(metrics.average_accuracy(R))
    assert cl["forgetting"] == pytest.approx(metrics.forgetting(R))
    assert cl["bwt"] == pytest.approx(metrics.backward_transfer(R))
    assert len(cl["acc_matrix_task_il"]) == 5 and cl["avg_acc_task_il"] >= cl["avg_acc"]
    assert 0 < cl["eval_seconds"] < cl["fit_seconds"] and 0 < cl["eval_share"] < 1
    assert cl["train_seconds"] == pytest.approx(cl["fit_seconds"] - cl["eval_seconds"])
    if method in REPLAY:
        replay = s["replay"]
        logits = 10 if method in ("der", "derpp") else 0
        assert replay["samples"] == replay["capacity"] == 500
        assert replay["bytes"] == 500 * bytes_per_sample((1, 8, 8), logits)  # digits are 1x8x8 uint8
    else:
        assert "replay" not in s


# Every baseline on every scenario it supports, through the real config and debug=fdr (one batch
# per task, one evaluation batch). PackNet needs the task id (task-IL); its refusals of the others
# are in test_baselines.py.
ALL_SCENARIOS = ["class_il", "task_il", "blurry"]
BASELINE_SCENARIOS = {
    "ewc_on": ALL_SCENARIOS,
    "si": ALL_SCENARIOS,
    "lwf": ALL_SCENARIOS,
    "icarl": ALL_SCENARIOS,
    "agem": ALL_SCENARIOS,
    "gdumb": ALL_SCENARIOS,
    "packnet": ["task_il"],
}


@pytest.mark.parametrize(
    "method, scenario", [(m, sc) for m, scenarios in BASELINE_SCENARIOS.items() for sc in scenarios]
)
def test_every_baseline_composes_and_runs_debug_fdr_on_its_scenarios(tmp_path, method, scenario):
    from omegaconf import OmegaConf

    from sparseforge.methods import METHODS

    overrides = [f"method={method}", f"scenario={scenario}", "debug=fdr", "callbacks=none"]
    overrides += ["method.fitting_epochs=2"] if method == "gdumb" else []
    cfg = compose_config([*QUIET, *overrides], output_dir=tmp_path / "run")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["method"]["_target_"].endswith(METHODS.get(method).__qualname__)
    assert resolved["scenario"]["epochs_per_task"] == 1 and resolved["trainer"]["limit_train_batches"] == 1
    with one_thread():
        train(cfg)
    s = summary(tmp_path / "run")
    cl = s["cl"]
    assert s["status"] == "completed" and cl["scenario"] == scenario and not cl["partial_last_task"]
    assert cl["completed_tasks"] == cl["n_tasks"] and all(v is not None for v in cl["acc_matrix"][-1])


def test_joint_trains_on_every_task_so_far(tmp_path):
    r = build(compose_config([*QUIET, "method=joint"], output_dir=tmp_path / "run"))
    tasks = r.datamodule.tasks
    for task in tasks:
        index = r.method.training_indices(task, tasks)
        expected = torch.sort(torch.cat([t.train_index for t in tasks[: task.id + 1]])).values
        assert torch.equal(index, expected)


def test_replay_stores_raw_images_and_the_batch_logits(tmp_path, data_dir):
    """On CIFAR (random crop + flip) the buffer holds the non-augmented uint8 images."""
    write_cifar(data_dir, n_train=120, n_test=40)
    overrides = [
        "dataset=cifar10",
        f"paths.data_dir={data_dir}",
        "dataset.verify_checksums=false",
        "model=small_cnn",
        "model.channels=[4,8,8]",
        "method=derpp",
        "method.buffer_size=50",
        "data.batch_size=16",
        "scenario.n_tasks=2",
    ]
    with one_thread():
        train(compose_config([*QUIET, *overrides], output_dir=tmp_path / "run"))
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    buf = ckpt["method_state"]["buffer"]
    r = build(compose_config([*QUIET, *overrides], output_dir=tmp_path / "check"))
    images, ys = r.datamodule.train_data.x, r.datamodule.train_data.y
    stored = torch.nonzero(buf["valid"]).flatten()
    assert len(stored) == 50
    for slot in stored.tolist():
        match = (images == buf["x"][slot]).flatten(1).all(1)
        assert match.any(), "a stored image is not a raw training image"
        assert ys[match][0] == buf["y"][slot]
    assert buf["logits"].shape == (50, 10) and bool((buf["logits"][stored] != 0).any())
    assert set(buf["task"][stored].tolist()) == {0, 1}


def test_task_il_scenario_reports_task_il_as_the_main_accuracy(tmp_path):
    s = run(tmp_path, ["scenario=task_il", "method=er", "callbacks=none"])
    assert s["metrics"]["test/acc"] == pytest.approx(s["cl"]["avg_acc_task_il"])
    assert s["metrics"]["test/acc_class_il"] == pytest.approx(s["cl"]["avg_acc"])


def test_forward_transfer_option(tmp_path):
    s = run(tmp_path, ["task_loop.forward_transfer=true", "callbacks=none"])
    cl = s["cl"]
    R, initial = cl["acc_matrix"], cl["initial_acc"]
    assert len(initial) == 5 and all(0 <= a <= 1 for a in initial)
    assert all(R[t][t + 1] is not None for t in range(4))  # the next task, evaluated before training it
    assert all(R[t][j] is None for t in range(5) for j in range(t + 2, 5))
    assert cl["fwt"] == pytest.approx(metrics.forward_transfer(R, initial))
    # the extra entries do not change the other metrics' definitions
    assert cl["avg_acc"] == pytest.approx(sum(R[4]) / 5)


def test_blurry_runs_on_cifar(tmp_path, data_dir):
    """SHARP's blurry builder crashes on CIFAR's list targets; ours runs it end to end."""
    write_cifar(data_dir, n_train=200, n_test=100)
    s = run(
        tmp_path,
        [
            "dataset=cifar10",
            f"paths.data_dir={data_dir}",
            "dataset.verify_checksums=false",
            "model=small_cnn",
            "model.channels=[4,8,8]",
            "scenario=blurry",
            "scenario.class_per_episode=3",
            "method=er",
            "method.buffer_size=40",
            "data.batch_size=32",
            "callbacks=none",
        ],
    )
    cl = s["cl"]
    assert cl["scenario"] == "blurry" and cl["n_tasks"] >= 4  # 10 classes, 3 per episode
    assert "acc_matrix_task_il" not in cl and "test/acc_task_il" not in s["metrics"]
    assert cl["acc_seen_classes"] == [cl["acc_matrix"][t][t] for t in range(cl["n_tasks"])]
    classes = cl["task_classes"]
    assert all(len(set(c)) == 3 for c in classes) and set().union(*map(set, classes)) == set(range(10))


def test_checkpoints_after_every_task_and_heat_map(tmp_path):
    s = run(tmp_path, ["task_loop.keep_task_checkpoints=true", "scenario.epochs_per_task=2"])
    run_dir = tmp_path / "run"
    for t in range(5):
        ckpt = torch.load(run_dir / "checkpoints" / f"task_{t}.ckpt", weights_only=True)
        assert ckpt["epoch"] == 2 * t + 1  # the task's last epoch
        loop = next(v for k, v in ckpt["callbacks"].items() if "ContinualLoop" in k)
        assert loop["completed_tasks"] == t + 1 and loop["acc"][t] == s["cl"]["acc_matrix"][t]
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    png = (run_dir / "acc_matrix.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


def test_wandb_gets_task_axis_and_matrix_table(tmp_path):
    import json

    from tests.helpers.wandb_records import of_type, offline_run_dirs, records_when_finished

    s = run(tmp_path, ["logger=wandb", "logger.wandb.mode=offline", "callbacks=none"])
    (offline,) = offline_run_dirs(tmp_path / "run")
    records = records_when_finished(offline)  # wandb-core writes its files after finish() returns
    axes = {(r.metric.glob_name, r.metric.step_metric) for r in of_type(records, "metric")}
    assert ("cl/*", "task") in axes  # every cl/* metric is plotted against `task`
    tasks_logged = {
        json.loads(i.value_json)
        for r in of_type(records, "history")
        for i in r.history.item
        if list(i.nested_key) == ["task"]
    }
    assert tasks_logged == {0, 1, 2, 3, 4}
    tables = list(offline.glob("files/media/table/cl/acc_matrix_*.table.json"))
    assert tables, "R was not logged as a W&B table"
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["after_task", *[f"task_{j}" for j in range(5)]]
    assert [row[1:] for row in table["data"]] == s["cl"]["acc_matrix"]
    # the confusion matrix after every task, one table each, and the per-class accuracies at the end
    confusions = [json.loads(p.read_text()) for p in offline.glob("files/media/table/cl/confusion_matrix_*.table.json")]
    assert len(confusions) == 5
    assert all(c["columns"] == ["true_class", *[f"predicted_{k}" for k in range(10)]] for c in confusions)
    logged = sorted(json.dumps([row[1:] for row in c["data"]]) for c in confusions)
    assert logged == sorted(json.dumps(m) for m in s["cl"]["confusion_matrix"])
    (per_class,) = [json.loads(p.read_text()) for p in offline.glob("files/media/table/cl/per_class_acc_*.table.json")]
    assert [row[1:] for row in per_class["data"]] == s["cl"]["per_class_acc"]
    for image in ("acc_matrix_heatmap", "per_class_acc_heatmap", "confusion_matrix_heatmap"):
        assert list(offline.glob(f"files/media/images/cl/{image}_*.png")), f"{image} was not logged"


def test_bad_inputs_fail_at_start_naming_the_key(tmp_path):
    cases = {
        "method.buffer_size": ["method=er", "method.buffer_size=5000"],  # digits has 1,347 training images
        "method": ["scenario=task_il", "method=finetune", "method._target_=tests.helpers.cl.ClassILOnly"],
        "scenario.n_tasks": ["scenario.n_tasks=3"],
        "scenario.class_order": ["scenario.class_order=[0,1,2,3,4,5,6,7,8,0]"],
    }
    for key, overrides in cases.items():
        with pytest.raises(ConfigError, match=f"config error: {key}: "):
            build(compose_config([*QUIET, *overrides], output_dir=tmp_path / key))


def test_bad_input_is_one_line_from_the_cli(tmp_path):
    proc = run_cli(["method=derpp", "method.buffer_size=100000", f"hydra.run.dir={tmp_path / 'run'}", *QUIET])
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: config error: method.buffer_size: 100000 is larger than the 1347 training examples "
        "of the whole stream (allowed: 1..1347)"
    ]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()
