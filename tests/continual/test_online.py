"""Task-free (online) streams: one pass, no boundary reaches the method, the accuracy matrix is
still filled at the hidden task ends, and a method that needs boundaries refuses in one line."""

from __future__ import annotations

import pytest

from sparseforge.errors import ConfigError
from sparseforge.train import build, train
from tests.helpers.cl import QUIET, one_thread, summary
from tests.helpers.cli import run_cli
from tests.helpers.config import compose_config

ONLINE = ["scenario.online=true", "scenario.epochs_per_task=1", "callbacks=none"]
RECORDER = ["method=er", "method._target_=tests.helpers.cl.BoundaryRecorder", "method.buffer_size=100"]


def _run(tmp_path, *overrides, name="run") -> dict:
    with one_thread():
        train(compose_config([*QUIET, *overrides], output_dir=tmp_path / name))
    return summary(tmp_path / name)


def test_an_online_stream_hides_the_boundaries_but_fills_the_matrix(tmp_path):
    s = _run(tmp_path, *ONLINE, *RECORDER)
    seen = s["boundaries"]
    assert seen["begin_task"] == [] and seen["end_task"] == []  # never told where a task starts or ends
    assert seen["current_task"] == [0]
    assert seen["distinct_optimizers"] == 1  # one optimizer across the hidden boundaries
    cl = s["cl"]
    assert cl["completed_tasks"] == 5 and all(v is not None for v in cl["acc_matrix"][-1])
    assert all(cl["acc_matrix"][t][t] is not None for t in range(5))  # evaluated at every hidden task end


def test_the_same_stream_with_boundaries_tells_the_method(tmp_path):
    seen = _run(tmp_path, "scenario.epochs_per_task=1", "callbacks=none", *RECORDER)["boundaries"]
    assert seen["begin_task"] == [0, 1, 2, 3, 4] and seen["end_task"] == [0, 1, 2, 3, 4]
    assert seen["current_task"] == [0, 1, 2, 3, 4] and seen["distinct_optimizers"] == 5


def test_an_online_stream_is_one_pass(tmp_path):
    with pytest.raises(ConfigError, match="config error: scenario.epochs_per_task: an online stream is one pass"):
        build(compose_config([*QUIET, "scenario.online=true", "scenario.epochs_per_task=2"], output_dir=tmp_path / "r"))


@pytest.mark.parametrize("method", ["joint", "sparcl", "sharp"])
def test_a_method_that_needs_boundaries_refuses_an_online_stream(tmp_path, method):
    extra = {
        "sharp": ["model=sharp_mnistlike", "dataset=mnist"],
        "sparcl": ["sparsity=sparcl", "sparsity.include=null"],
    }.get(method, [])
    cfg = compose_config([*QUIET, *ONLINE, f"method={method}", *extra], output_dir=tmp_path / "r")
    with pytest.raises(ConfigError) as err:
        build(cfg)
    message = str(err.value)
    assert message.startswith(f"config error: scenario.online: method {method} needs task boundaries")
    assert "finetune" in message and "er" in message and "joint," not in message and "\n" not in message


@pytest.mark.e2e  # a CLI subprocess
def test_the_refusal_is_one_line_from_the_cli(tmp_path):
    proc = run_cli(["method=joint", *ONLINE, f"hydra.run.dir={tmp_path / 'run'}", *QUIET])
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "scenario.online: method joint needs task boundaries" in errors[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_an_epoch_scheduler_is_refused_online(tmp_path):
    cfg = compose_config([*QUIET, *ONLINE, "lr_scheduler=cosine"], output_dir=tmp_path / "r")
    with pytest.raises(ConfigError, match="config error: method.lr_scheduler_interval: .*hidden tasks.*allowed: step"):
        build(cfg)


@pytest.mark.parametrize("method", ["finetune", "er", "er_ace", "der", "derpp"])
def test_task_free_methods_run_online(tmp_path, method):
    s = _run(tmp_path, *ONLINE, f"method={method}", "debug=fdr")
    assert s["status"] == "completed" and s["cl"]["completed_tasks"] == 5


def test_er_ace_replays_from_the_first_task_when_online(tmp_path):
    """Task-free ER-ACE (the authors' code) replays as soon as the buffer holds examples; with
    boundaries (Mammoth) it waits for the second task. After one task, only the online run replayed."""
    counted = "+callbacks.replays._target_=tests.helpers.cl.count_replay_draws"
    one_task = ["method=er_ace", "trainer.max_epochs=1", counted]
    online = _run(tmp_path, *ONLINE, *one_task, "+callbacks.replays.path=" + str(tmp_path / "a.txt"), name="a")
    offline = _run(tmp_path, "scenario.epochs_per_task=1", "callbacks=none", *one_task,
                   "+callbacks.replays.path=" + str(tmp_path / "b.txt"), name="b")  # fmt: skip
    assert online["status"] == offline["status"] == "completed"
    assert int((tmp_path / "a.txt").read_text()) > 0 and int((tmp_path / "b.txt").read_text()) == 0
