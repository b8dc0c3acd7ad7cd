"""The progress bar redraws at most ten times a second; the profiler adds no per-hook work; under
it, Lightning calls a callback only at the hooks it implements."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.profilers import SimpleProfiler
from lightning.pytorch.trainer import call as lightning_call

from sparseforge.lightning import progress
from sparseforge.lightning.profiler import NoProfiler, implements, install_callback_dispatch
from sparseforge.train import build
from tests.helpers.cl import QUIET
from tests.helpers.config import compose_config


class _CountingBar:
    """Stands in for Lightning's bar below the throttle: counts the updates that reach it."""

    total_train_batches = 50

    def __init__(self):
        self.updates: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.updates.append(batch_idx)


class _Throttled(progress._AtMostTenTimesASecond, _CountingBar):
    pass


def test_updates_within_a_tenth_of_a_second_are_skipped_but_not_the_epochs_last(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    bar = _Throttled()
    for batch_idx in range(50):
        bar.on_train_batch_end(None, None, None, None, batch_idx)
        now[0] += 0.03  # a batch every 30 ms: an update every 4th batch
    assert bar.updates == [*range(0, 49, 4), 49]


def test_build_installs_the_throttled_bar_and_the_no_op_profiler(tmp_path):
    overrides = [o for o in QUIET if "enable_progress_bar" not in o]
    run = build(compose_config([*overrides, "method=finetune"], output_dir=tmp_path / "on"))
    bar = run.trainer.progress_bar_callback
    assert isinstance(bar, (progress.ThrottledRichProgressBar, progress.ThrottledTQDMProgressBar))
    assert isinstance(run.trainer.profiler, NoProfiler)
    run = build(compose_config([*QUIET, "method=finetune"], output_dir=tmp_path / "off"))
    assert run.trainer.progress_bar_callback is None


def test_a_bar_given_as_a_callback_is_kept(tmp_path):
    overrides = [o for o in QUIET if "enable_progress_bar" not in o]
    own = ["+callbacks.bar._target_=lightning.pytorch.callbacks.TQDMProgressBar", "+callbacks.bar.refresh_rate=5"]
    run = build(compose_config([*overrides, "method=finetune", *own], output_dir=tmp_path / "own"))
    assert type(run.trainer.progress_bar_callback) is pl.callbacks.TQDMProgressBar


def test_no_profiler_context_is_reusable():
    profiler = NoProfiler()
    with profiler.profile("a") as first, profiler.profile("b") as second:
        assert first is None and second is None


class _Calls(pl.Callback):
    def __init__(self, log: list, name: str):
        self.log, self.name = log, name

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.log.append((self.name, pl_module._current_fx_name, outputs, batch_idx))


class _Idle(pl.Callback):
    """Implements no per-batch hook, but counts how often one is looked up."""

    looked_up = 0

    def __getattribute__(self, name):
        if name == "on_train_batch_end":
            type(self).looked_up += 1
        return super().__getattribute__(name)


def _trainer(profiler, callbacks):
    trainer = pl.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, profiler=profiler, callbacks=callbacks
    )
    trainer.strategy.connect(pl.LightningModule())
    return trainer


def test_only_the_callbacks_that_implement_a_hook_are_called_in_order_with_its_arguments():
    install_callback_dispatch()
    _Idle.looked_up = 0
    log: list = []
    idle = _Idle()
    trainer = _trainer(NoProfiler(), [_Calls(log, "a"), idle, _Calls(log, "b")])
    trainer.lightning_module._current_fx_name = "training_step"
    lightning_call._call_callback_hooks(trainer, "on_train_batch_end", "out", "batch", 3)
    assert log == [("a", "on_train_batch_end", "out", 3), ("b", "on_train_batch_end", "out", 3)]
    assert trainer.lightning_module._current_fx_name == "training_step"  # restored, as Lightning does
    assert _Idle.looked_up == 0 and not implements(idle, "on_train_batch_end")
    trainer.callbacks.append(_Calls(log, "late"))  # a callback added after the first call is seen
    idle.on_train_batch_end = lambda *args: log.append(("instance", args[-1]))  # so is an instance's own hook
    lightning_call._call_callback_hooks(trainer, "on_train_batch_end", "out", "batch", 4)
    assert [entry[0] for entry in log[2:]] == ["a", "instance", "b", "late"]


def test_with_another_profiler_every_callback_is_called_as_lightning_does():
    install_callback_dispatch()
    _Idle.looked_up = 0
    trainer = _trainer(SimpleProfiler(), [_Idle(), _Calls([], "a")])
    lightning_call._call_callback_hooks(trainer, "on_train_batch_end", "out", "batch", 0)
    assert _Idle.looked_up == 1
