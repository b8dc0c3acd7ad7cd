"""``self.log`` skips the device move of a result already on the value's device, and only that."""

from __future__ import annotations

import torch
from lightning.pytorch.trainer.connectors.logger_connector import result as lightning_result
from lightning.pytorch.trainer.connectors.logger_connector.result import _Metadata, _ResultCollection, _ResultMetric

from sparseforge.lightning.result_moves import install_result_move_skip


def logged(value: torch.Tensor) -> _ResultMetric:
    collection = _ResultCollection(training=True)
    collection.log("training_step", "train/loss", value, on_step=True, on_epoch=True)
    return collection["training_step.train/loss"]


def count_walks(monkeypatch) -> list[int]:
    """One entry per walk Lightning's own move makes over a result's ``__dict__``."""
    walks: list[int] = []
    real = lightning_result.apply_to_collection
    monkeypatch.setattr(lightning_result, "apply_to_collection", lambda *a, **k: walks.append(1) or real(*a, **k))
    return walks


def test_a_result_on_the_values_device_is_not_walked(monkeypatch):
    install_result_move_skip()
    result = logged(torch.tensor(2.0))
    walks = count_walks(monkeypatch)
    assert result.to(torch.device("cpu")) is result
    assert walks == []  # Lightning walks the metric's whole __dict__ here
    value, batches = result.value, result.cumulated_batch_size
    result.to(torch.device("meta"))  # another device: Lightning's own move
    assert walks == [1] and result.value.device.type == "meta" and result.cumulated_batch_size.device.type == "meta"
    assert value.device.type == "cpu" and batches.device.type == "cpu"


def test_other_arguments_take_lightnings_move(monkeypatch):
    install_result_move_skip()
    result = logged(torch.tensor(1.0))
    walks = count_walks(monkeypatch)
    result.to("cpu")  # a string, not a device
    result.to(device=torch.device("cpu"))  # a keyword
    assert walks == [1, 1]
    plain = _ResultMetric(_Metadata(fx="training_step", name="m"), is_tensor=False)  # a logged torchmetrics Metric
    plain.to(torch.device("cpu"))
    assert walks == [1, 1, 1]


def test_logging_after_the_skip_accumulates_as_before():
    install_result_move_skip()
    collection = _ResultCollection(training=True)
    for v in (1.0, 2.0, 6.0):
        collection.log("training_step", "x", torch.tensor(v), on_step=False, on_epoch=True, batch_size=1)
    assert float(collection["training_step.x"].compute()) == 3.0
