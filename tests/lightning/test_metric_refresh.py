"""Rebuilding the trainer's metrics only after a batch that changed them leaves every metric,
after every batch, exactly as Lightning's rebuild after every batch does."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import _LoggerConnector
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from torch.utils.data import DataLoader, TensorDataset

from sparseforge.lightning import metric_refresh
from sparseforge.lightning.metric_refresh import install_metric_refresh_skip
from tests.helpers.lightning_trainer import bare_trainer


class SparseLogger(pl.LightningModule):
    """Logs now and then, on step and on epoch, with the same key in training and validation."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.layer(x), y)
        if batch_idx % 3 == 0:
            self.log("loss", loss, prog_bar=True)
            self.log("every_third", float(batch_idx), on_step=True, on_epoch=True)
        if batch_idx == 1:
            self.log("once_an_epoch", loss * 2, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("loss", torch.nn.functional.cross_entropy(self.layer(x), y))  # the training key

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Snapshots(pl.Callback):
    """The trainer's three metric dicts as Lightning left them after each batch (read directly:
    the public properties rebuild them first)."""

    def __init__(self):
        self.taken: list[dict] = []

    def _take(self, trainer):
        c = trainer._logger_connector
        self.taken.append(
            {
                "callback": dict(c._callback_metrics),
                "pbar": dict(c._progress_bar_metrics),
                "logged": dict(c._logged_metrics),
            }
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._take(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        self._take(trainer)

    def on_validation_start(self, trainer, pl_module):
        self._take(trainer)
        assert isinstance(trainer.callback_metrics, dict)  # a read in the middle of the epoch, as ModelCheckpoint does


def _fit(tmp_path, name: str) -> list[dict]:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,)))
    snapshots = Snapshots()
    trainer = bare_trainer(
        default_root_dir=tmp_path / name,
        max_epochs=2,
        val_check_interval=5,  # validation in the middle of each epoch
        callbacks=[snapshots],
    )
    trainer.fit(SparseLogger(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=8))
    return snapshots.taken


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


def test_metrics_after_every_batch_are_lightnings(tmp_path, monkeypatch):
    install_metric_refresh_skip()
    rebuilds: list[bool] = []  # after a training batch (True) or a validation one
    real = metric_refresh._LIGHTNINGS_REFRESH
    monkeypatch.setattr(
        metric_refresh, "_LIGHTNINGS_REFRESH", lambda self: rebuilds.append(self.trainer.training) or real(self)
    )
    skipping = _fit(tmp_path, "skipping")
    with monkeypatch.context() as lightnings:
        lightnings.setattr(_LoggerConnector, "on_batch_end", real)
        every_batch = _fit(tmp_path, "lightning")
    assert len(skipping) == len(every_batch) == 1 + 2 * (10 + 2 + 1)  # sanity check; batches, validations, epoch end
    for step, (ours, theirs) in enumerate(zip(skipping, every_batch, strict=True)):
        for kind in ("callback", "pbar", "logged"):
            assert ours[kind].keys() == theirs[kind].keys(), (step, kind)
            for key, value in theirs[kind].items():
                assert _same(ours[kind][key], value), (step, kind, key)
    assert 0 < sum(rebuilds) <= 14  # after the 5 logging batches of an epoch and the 2 after its validations


@pytest.mark.parametrize("change", ["log", "reset", "cpu", "read", "cleared"])
def test_a_change_to_the_results_or_a_read_brings_back_the_rebuild(change):
    install_metric_refresh_skip()
    trainer = bare_trainer()
    module = SparseLogger()
    trainer.strategy.connect(module)
    module.trainer = trainer
    trainer.state.fn, trainer.state.stage = TrainerFn.FITTING, RunningStage.TRAINING
    connector, results = trainer._logger_connector, trainer._results
    connector.on_batch_start(None)
    module._current_fx_name = "training_step"
    module.log("loss", torch.tensor(1.0), prog_bar=True, batch_size=1)
    connector.on_batch_end()
    assert connector._progress_bar_metrics == {"loss": 1.0}
    connector._progress_bar_metrics.clear()  # what a skipped rebuild leaves is visible
    connector.on_batch_end()
    assert connector._progress_bar_metrics == {}
    if change == "log":
        module.log("loss", torch.tensor(2.0), prog_bar=True, batch_size=1)
    elif change == "reset":
        results.reset()
    elif change == "cpu":
        results.cpu()
    elif change == "read":
        assert trainer.progress_bar_metrics  # rebuilds what it returns: the next batch end rebuilds too
        connector._progress_bar_metrics.clear()
    else:
        connector.reset_metrics()  # Lightning empties the trainer's metrics (a new stage)
    connector.on_batch_end()
    expected = {"log": {"loss": 2.0}, "reset": {}}.get(change, {"loss": 1.0})
    assert connector._progress_bar_metrics == expected
