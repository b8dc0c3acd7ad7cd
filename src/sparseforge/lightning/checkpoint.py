"""Checkpoints only at whole epochs, so that every resume is exact."""

from __future__ import annotations

import math

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


def epoch_cut_short(trainer: pl.Trainer) -> bool:
    """True at the end of an epoch that max_steps, max_time or a stop request ended early."""
    planned = trainer.num_training_batches
    done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
    return math.isfinite(planned) and done < planned


class EpochCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, minus the save at an epoch that was cut short.

    Lightning still calls on_train_epoch_end when max_steps or max_time stops a run mid-epoch,
    and a checkpoint saved there marks the whole epoch as done: resuming from it silently skips
    the epoch's remaining batches. Keeping the previous epoch's last.ckpt instead makes the
    resumed run replay that epoch and end bit-identical to an uninterrupted one.
    """

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not epoch_cut_short(trainer):
            super().on_train_epoch_end(trainer, pl_module)
