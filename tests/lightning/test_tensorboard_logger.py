"""logger=tensorboard: Lightning's own TensorBoardLogger writes event files with the cl metrics."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing import event_accumulator  # the dev extra installs it

from sparseforge.train import train
from tests.helpers.cl import QUIET, one_thread, summary
from tests.helpers.config import compose_config


def test_a_run_writes_tensorboard_events_with_the_cl_metrics(tmp_path):
    overrides = [q for q in QUIET if not q.startswith("logger=")] + ["logger=tensorboard", "callbacks=none"]
    with one_thread():
        train(compose_config(overrides, output_dir=tmp_path / "run"))
    s = summary(tmp_path / "run")
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    acc = event_accumulator.EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"cl/avg_acc", "cl/forgetting", "train/loss", *[f"cl/acc_task_{j}" for j in range(5)]} <= tags
    final = acc.Scalars("cl/avg_acc")
    assert len(final) == 5  # one value per task
    assert final[-1].value == pytest.approx(s["cl"]["avg_acc"], rel=1e-6)
    assert [e.value for e in acc.Scalars("task")] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert (tmp_path / "run" / "csv" / "metrics.csv").exists()  # the CSV log rides along, as with W&B


def test_without_the_tensorboard_package_the_run_stops_at_start_in_one_line(tmp_path, monkeypatch):
    import lightning.fabric.loggers.tensorboard as fabric_tensorboard

    from sparseforge.errors import ConfigError
    from sparseforge.train import build

    # what Lightning sees when neither tensorboard nor tensorboardX is installed
    monkeypatch.setattr(fabric_tensorboard, "_TENSORBOARD_AVAILABLE", False)
    monkeypatch.setattr(fabric_tensorboard, "_TENSORBOARDX_AVAILABLE", False)
    overrides = [q for q in QUIET if not q.startswith("logger=")] + ["logger=tensorboard"]
    with pytest.raises(ConfigError) as err:
        build(compose_config(overrides, output_dir=tmp_path / "run"))
    message = str(err.value)
    assert message.startswith("config error: logger.tensorboard: needs a package that is not installed")
    assert "\n" not in message and "tensorboard" in message.split("installed", 1)[1]
