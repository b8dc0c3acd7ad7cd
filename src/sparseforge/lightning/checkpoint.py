"""Checkpoints at whole epochs and, optionally, every N steps inside one: every resume is exact."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import timedelta

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from sparseforge.errors import ConfigError
from sparseforge.lightning.slurm import defer_requeue_signal


def epoch_cut_short(trainer: pl.Trainer) -> bool:
    """True at the end of an epoch that max_steps, max_time or a stop request ended early."""
    planned = trainer.num_training_batches
    done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
    return math.isfinite(planned) and done < planned


def resumed_mid_epoch(trainer: pl.Trainer) -> bool:
    """True during a fit restored from a checkpoint written inside an epoch.

    Lightning then skips ``on_train_epoch_start`` for the restored epoch (it already ran before
    the checkpoint), so state that a hook builds at an epoch's start must come from the
    checkpoint or be rebuilt in ``on_train_start``.
    """
    return trainer.fit_loop.restarted_mid_epoch


class ResumeCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (whole epochs), plus saves inside an epoch, all exact on resume.

    ``every_n_train_steps`` / ``train_time_interval`` add saves inside an epoch, to the same file
    (Lightning makes them exclusive with ``every_n_epochs``; here they come on top). A resume from
    such a save continues at the next batch: the training loader is stateful (``SlicedLoader``,
    ``ResumableLoader``), and model, optimizer, method state, masks and every RNG state are in
    the checkpoint. Two saves are left out on purpose:

    - at an epoch's last batch: Lightning would treat that checkpoint as a finished epoch whose
      end-of-epoch hooks never ran (the task loop evaluates there), and the end-of-epoch save
      follows a moment later anyway;
    - at the end of an epoch that was cut short (max_steps, max_time, a stop request): Lightning
      still calls on_train_epoch_end then, and a checkpoint saved there marks the whole epoch as
      done, so a resume would silently skip its remaining batches. The previous checkpoint stays.

    Under SLURM with Lightning's auto-requeue, the requeue signal is answered at the next of these
    safe points: the step it interrupted completes, ``last.ckpt`` is saved, and then Lightning's
    handler writes its HPC checkpoint and requeues. The requeued job resumes after that step, and
    loses nothing. Under DDP the ranks agree on that step (a one-flag all-reduce per step, only
    where Lightning requeues), since the signal reaches each rank at its own point of a step.
    """

    def __init__(self, *args, every_n_train_steps: int | None = None, train_time_interval=None, **kwargs):
        super().__init__(*args, **kwargs)
        if every_n_train_steps is not None and int(every_n_train_steps) < 1:
            raise ConfigError("callbacks.model_checkpoint.every_n_train_steps", "must be >= 1 or null", ">= 1")
        self.step_interval = int(every_n_train_steps) if every_n_train_steps else None
        self.time_interval: timedelta | None = train_time_interval
        self._last_step_save = time.monotonic()
        self._requeue: Callable[[], None] | None = None  # Lightning's SLURM requeue, deferred
        self._requeue_requested = False  # set by the requeue signal, read at the next safe point

    @property
    def state_key(self) -> str:
        # Lightning reads it at every hook it calls on this callback, about six times a step, and
        # ModelCheckpoint builds it each time from a repr of its settings, which never change.
        key = self.__dict__.get("_state_key")
        if key is None:
            key = self.__dict__["_state_key"] = super().state_key
        return key

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # SLURM's warning before the time limit (--signal=USR1@90): requeue from an exact
        # checkpoint of the current step instead of one written in the middle of a step.
        self._requeue = defer_requeue_signal(trainer, self._request_requeue)

    def _request_requeue(self) -> None:
        self._requeue_requested = True  # runs inside a signal handler: set a flag, nothing else

    def _requeue_due(self, trainer: pl.Trainer) -> bool:
        if self._requeue is None:
            return False
        if trainer.world_size > 1:  # every rank must answer at the same step
            return bool(trainer.strategy.reduce_boolean_decision(self._requeue_requested, all=False))
        return self._requeue_requested

    def _run_requeue(self, trainer: pl.Trainer) -> None:
        requeue, self._requeue = self._requeue, None  # once: a later signal on another rank is moot
        commit_now = getattr(trainer.strategy.checkpoint_io, "commit_now", None)
        if commit_now is not None:  # last.ckpt in place now: the job ends soon after the requeue
            commit_now()
        requeue()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args, **kwargs) -> None:
        if self.step_interval is None and self.time_interval is None and self._requeue is None:
            return  # nothing can be due inside an epoch (the default): a step costs one test
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch or trainer.sanity_checking:
            return
        due = self.step_interval is not None and trainer.global_step % self.step_interval == 0
        if self.time_interval is not None:
            elapsed = time.monotonic() - self._last_step_save >= self.time_interval.total_seconds()
            due = due or bool(trainer.strategy.broadcast(elapsed))  # every rank must take part
        requeue = self._requeue_due(trainer)
        if (due or requeue) and trainer.global_step != self._last_global_step_saved and not trainer.fast_dev_run:
            metrics = {**trainer.callback_metrics, "epoch": trainer.current_epoch, "step": trainer.global_step}
            trainer.save_checkpoint(self.format_checkpoint_name(metrics), self.save_weights_only)
            self._last_global_step_saved = trainer.global_step
            self._last_step_save = time.monotonic()
        if requeue:
            self._run_requeue(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not epoch_cut_short(trainer):
            super().on_train_epoch_end(trainer, pl_module)
        if self._requeue_due(trainer):
            self._run_requeue(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self._requeue_due(trainer):  # a signal after the last step: nothing left to save
            self._run_requeue(trainer)
