"""A callback that makes a tiny run last long enough to be preempted while it trains."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback


class EpochPace(Callback):
    """Sleeps after every training epoch. It changes no computation, only how long a run takes:
    without it a tiny SLURM test run can finish before the test's requeue or signal reaches it."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        time.sleep(self.seconds)


class StepPace(Callback):
    """Sleeps after every training step (changes no computation): widens the time between two
    step checkpoints, so that a test's SIGKILL reliably lands between them."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)
