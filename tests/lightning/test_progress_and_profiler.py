"""The progress bar redraws at most ten times a second; the profiler adds no per-hook work."""

from __future__ import annotations

import lightning.pytorch as pl

from sparseforge.lightning import progress
from sparseforge.lightning.profiler import NoProfiler
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
