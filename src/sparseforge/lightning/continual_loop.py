"""The task loop as a Lightning callback: one ``trainer.fit`` runs every task in sequence.

Task ``t`` owns epochs ``[t*E, (t+1)*E)`` (``E = scenario.epochs_per_task``); the datamodule
serves that task's data. At a task's first epoch the callback calls ``begin_task`` and gives the
method a fresh optimizer (as Mammoth and SparCL do); after its last epoch it calls ``end_task``
and evaluates every task seen so far, filling row ``t`` of the accuracy matrix.

Because ModelCheckpoint runs after this callback, the checkpoint written at a task's last epoch
already holds the finished task, so a run killed at any point resumes exactly from the last
epoch boundary (see also ``RNGStateCallback``).
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch

from sparseforge.continual import metrics
from sparseforge.continual.evaluation import evaluate_tasks


class ContinualLoop(pl.Callback):
    def __init__(
        self,
        eval_batch_size: int = 512,
        eval_limit_batches: int | None = None,
        eval_every_n_epochs: int | None = None,
        reset_optimizer_per_task: bool = True,
    ):
        self.eval_batch_size = eval_batch_size
        self.eval_limit_batches = eval_limit_batches
        self.eval_every_n_epochs = eval_every_n_epochs
        self.reset_optimizer_per_task = reset_optimizer_per_task
        self.acc: list[list[float | None]] = []  # class-IL accuracy matrix R[t][j]
        self.acc_task_il: list[list[float | None]] = []
        self.completed_tasks = 0
        self.partial_last_task = False
        self.eval_seconds = 0.0
        self._active_task: int | None = None  # in memory only: which task this process has begun

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "acc": self.acc,
            "acc_task_il": self.acc_task_il,
            "completed_tasks": self.completed_tasks,
            "eval_seconds": self.eval_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.acc = state["acc"]
        self.acc_task_il = state["acc_task_il"]
        self.completed_tasks = state["completed_tasks"]
        self.eval_seconds = state.get("eval_seconds", 0.0)

    # -- hooks ----------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        dm.setup(stage)
        if not self.acc:
            n = dm.n_tasks
            self.acc = [[None] * n for _ in range(n)]
            self.acc_task_il = [[None] * n for _ in range(n)]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        dm = trainer.datamodule
        t = dm.task_of_epoch(trainer.current_epoch)
        if self._active_task == t:
            return
        self._active_task = t
        task = dm.tasks[t]
        if dm.epoch_in_task(trainer.current_epoch) == 0:
            pl_module.begin_task(task)
            if t > 0 and self.reset_optimizer_per_task:
                trainer.strategy.setup_optimizers(trainer)
        else:  # resumed inside a task: its state came back with the checkpoint
            pl_module.current_task = t

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        dm = trainer.datamodule
        epoch, t = trainer.current_epoch, dm.task_of_epoch(trainer.current_epoch)
        k = dm.epoch_in_task(epoch) + 1
        if k == dm.scenario.epochs_per_task:
            self._finish_task(trainer, pl_module, t)
        elif self.eval_every_n_epochs and k % self.eval_every_n_epochs == 0:
            # An intermediate check of the tasks seen so far; it does not enter the matrix.
            result = self._evaluate(trainer, pl_module, t)
            pl_module.log("val/avg_acc", sum(result["class_il"]) / (t + 1), rank_zero_only=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        # A run cut short (max_steps, fast_dev_run, batch limits) still reports the task it was in.
        if self._active_task is not None and self._active_task >= self.completed_tasks:
            self.partial_last_task = True
            self._finish_task(trainer, pl_module, self._active_task, in_loop=False)

    # -- internals ------------------------------------------------------------------------------------
    def _finish_task(self, trainer: pl.Trainer, pl_module, t: int, in_loop: bool = True) -> None:
        dm = trainer.datamodule
        pl_module.end_task(dm.tasks[t])
        result = self._evaluate(trainer, pl_module, t)
        self.acc[t][: t + 1] = result["class_il"]
        self.acc_task_il[t][: t + 1] = result["task_il"]
        self.completed_tasks = t + 1
        self._log_task(pl_module, t, in_loop)

    def _evaluate(self, trainer: pl.Trainer, pl_module, t: int) -> dict[str, list[float]]:
        dm = trainer.datamodule
        start = time.perf_counter()
        was_training = pl_module.training
        pl_module.eval()
        with trainer.precision_plugin.forward_context():
            result = evaluate_tasks(
                pl_module.predict_scores,
                dm.preprocess_eval,
                dm.test_data,
                dm.tasks[: t + 1],
                pl_module.device,
                batch_size=self.eval_batch_size,
                limit_batches=self.eval_limit_batches,
            )
        pl_module.train(was_training)
        self.eval_seconds += time.perf_counter() - start
        return result

    def _log_task(self, pl_module, t: int, in_loop: bool) -> None:
        values = {"task": float(t), "cl/avg_acc": metrics.average_accuracy(self.acc)}
        values["cl/avg_acc_task_il"] = metrics.average_accuracy(self.acc_task_il)
        for j in range(t + 1):
            values[f"cl/acc_task_{j}"] = self.acc[t][j]
        f = metrics.forgetting(self.acc)
        if f is not None:
            values["cl/forgetting"] = f
        if in_loop:
            pl_module.log_dict(values, rank_zero_only=True)
        elif pl_module.trainer.is_global_zero:  # on_train_end may not self.log: use the loggers
            for logger in pl_module.trainer.loggers:
                logger.log_metrics(values, step=pl_module.trainer.global_step)

    # -- results -------------------------------------------------------------------------------------
    def summary_section(self, trainer: pl.Trainer) -> dict[str, Any]:
        if not self.completed_tasks:
            return {}
        dm = trainer.datamodule
        R = self.acc
        cl = {
            "scenario": dm.scenario.name,
            "n_tasks": dm.n_tasks,
            "completed_tasks": self.completed_tasks,
            "partial_last_task": self.partial_last_task,
            "acc_matrix": R,
            "acc_matrix_task_il": self.acc_task_il,
            "avg_acc": metrics.average_accuracy(R),
            "avg_acc_task_il": metrics.average_accuracy(self.acc_task_il),
            "forgetting": metrics.forgetting(R),
            "bwt": metrics.backward_transfer(R),
            "eval_seconds": self.eval_seconds,
        }
        final = {"test/acc": cl["avg_acc"]}
        if dm.scenario.name != "iid":
            final["test/acc_task_il"] = cl["avg_acc_task_il"]
            if dm.scenario.task_incremental:
                final["test/acc"] = cl["avg_acc_task_il"]
                final["test/acc_class_il"] = cl["avg_acc"]
        return {"cl": cl, "metrics": final}
