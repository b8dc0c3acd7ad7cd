"""The task loop as a Lightning callback: one ``trainer.fit`` runs every task in sequence.

Task ``t`` owns epochs ``[t*E, (t+1)*E)`` (``E = scenario.epochs_per_task``); the datamodule
serves that task's data. At a task's first epoch the callback calls ``begin_task`` and gives the
method a fresh optimizer (as Mammoth and SparCL do); after its last epoch it calls ``end_task``
and evaluates every task seen so far, filling row ``t`` of the accuracy matrix (and, with
``forward_transfer``, the next task too, for FWT).

Because ModelCheckpoint runs after this callback, the checkpoint written at a task's last epoch
already holds the finished task. Everything a later epoch depends on is in the checkpoint (model,
optimizer, method state such as the replay buffer, masks, this loop's matrix, every RNG state)
and the data order is a function of (seed, epoch), so a run killed at any point and resumed from
its last checkpoint (an epoch boundary, or a step inside an epoch with
``callbacks.model_checkpoint.every_n_train_steps``) ends with the same accuracy matrix as an
uninterrupted run.

A task-free stream (``scenario.online=true``) keeps the boundaries from the method: neither
``begin_task`` nor ``end_task`` is called and the optimizer is not renewed; the loop still
evaluates at every (hidden) task end, so the accuracy matrix is the same kind of object.

After each task the loop also keeps the confusion matrix of the class-IL predictions on the test
examples evaluated then (``metrics.confusion_after_task``) and the accuracy per class.

Logging: ``task`` is the W&B x-axis of every ``cl/*`` metric (``define_metric``); the confusion
matrix goes to W&B as a table after every task; at the end R and the per-class accuracies are
logged as W&B tables and drawn as heat maps in the run directory (``acc_matrix.png``,
``per_class_acc.png``), with the last confusion matrix (``confusion_matrix.png``).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from sparseforge.continual import metrics
from sparseforge.continual.evaluation import evaluate_tasks
from sparseforge.lightning.checkpoint import resumed_mid_epoch


class ContinualLoop(pl.Callback):
    def __init__(
        self,
        eval_batch_size: int = 512,
        eval_limit_batches: int | None = None,
        eval_every_n_epochs: int | None = None,
        reset_optimizer_per_task: bool = True,
        forward_transfer: bool = False,
        keep_task_checkpoints: bool = False,
        heatmap: bool = True,
    ):
        self.eval_batch_size = eval_batch_size
        self.eval_limit_batches = eval_limit_batches
        self.eval_every_n_epochs = eval_every_n_epochs
        self.reset_optimizer_per_task = reset_optimizer_per_task
        self.forward_transfer = forward_transfer
        self.keep_task_checkpoints = keep_task_checkpoints
        self.heatmap = heatmap
        self.acc: list[list[float | None]] = []  # class-IL accuracy matrix R[t][j]
        self.acc_task_il: list[list[float | None]] = []
        self.confusion: list[list[list[int]] | None] = []  # per task: C x C counts after training it
        self.initial_acc: list[float] | None = None  # accuracy of the untrained model (FWT baseline)
        self.initial_acc_task_il: list[float] | None = None
        self.completed_tasks = 0
        self.partial_last_task = False
        self.eval_seconds = 0.0
        self._fit_seconds_before = 0.0  # fit time of earlier processes of this run (resumes)
        self._fit_started: float | None = None
        self._active_task: int | None = None  # in memory only: which task this process has begun
        self._train_ended = False  # whether on_train_end ran in this fit

    # -- state ---------------------------------------------------------------------------------------
    @property
    def fit_seconds(self) -> float:
        running = time.perf_counter() - self._fit_started if self._fit_started is not None else 0.0
        return self._fit_seconds_before + running

    def state_dict(self) -> dict[str, Any]:
        return {
            "acc": self.acc,
            "acc_task_il": self.acc_task_il,
            "confusion": self.confusion,
            "initial_acc": self.initial_acc,
            "initial_acc_task_il": self.initial_acc_task_il,
            "completed_tasks": self.completed_tasks,
            "eval_seconds": self.eval_seconds,
            "fit_seconds": self.fit_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.acc = state["acc"]
        self.acc_task_il = state["acc_task_il"]
        self.confusion = state.get("confusion") or [None] * len(self.acc)
        self.initial_acc = state.get("initial_acc")
        self.initial_acc_task_il = state.get("initial_acc_task_il")
        self.completed_tasks = state["completed_tasks"]
        self.eval_seconds = state.get("eval_seconds", 0.0)
        self._fit_seconds_before = state.get("fit_seconds", 0.0)

    # -- hooks ----------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        dm.setup(stage)
        if not self.acc:
            n = dm.n_tasks
            self.acc = [[None] * n for _ in range(n)]
            self.acc_task_il = [[None] * n for _ in range(n)]
            self.confusion = [None] * n
        if trainer.is_global_zero:
            for logger in _wandb_loggers(trainer):
                logger.experiment.define_metric("task")
                logger.experiment.define_metric("cl/*", step_metric="task")

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._fit_started = time.perf_counter()
        if resumed_mid_epoch(trainer):  # the epoch's start (begin_task included) ran before the save
            self._active_task = trainer.datamodule.task_of_epoch(trainer.current_epoch)
        if self.forward_transfer and self.initial_acc is None and self.completed_tasks == 0:
            # FWT compares R[j-1][j] with the untrained model's accuracy on task j.
            initial = self.evaluate(trainer, pl_module, trainer.datamodule.tasks)
            self.initial_acc, self.initial_acc_task_il = initial["class_il"], initial["task_il"]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        dm = trainer.datamodule
        t = dm.task_of_epoch(trainer.current_epoch)
        if self._active_task == t:
            return
        self._active_task = t
        if dm.scenario.online:  # task-free: the method is not told that a task starts
            return
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
            if self.keep_task_checkpoints:
                trainer.save_checkpoint(Path(trainer.default_root_dir) / "checkpoints" / f"task_{t}.ckpt")
        elif self.eval_every_n_epochs and k % self.eval_every_n_epochs == 0:
            # An intermediate check of the tasks seen so far; it does not enter the matrix.
            result = self.evaluate(trainer, pl_module, dm.tasks[: t + 1])
            pl_module.log("val/avg_acc", sum(result["class_il"]) / (t + 1), rank_zero_only=True)

    def on_fit_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._train_ended = False

    def on_fit_end(self, trainer: pl.Trainer, pl_module) -> None:
        # A run resumed from its final checkpoint (killed after training, before its summary)
        # trains nothing, and Lightning then skips on_train_end: the matrix is reported here.
        if not self._train_ended and trainer.is_global_zero and self.completed_tasks:
            self._report_matrix(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        self._train_ended = True
        # A run cut short (max_steps, fast_dev_run, batch limits) still reports the task it was in.
        if self._active_task is not None and self._active_task >= self.completed_tasks:
            self.partial_last_task = True
            self._finish_task(trainer, pl_module, self._active_task, in_loop=False)
        if self._fit_started is not None:
            self._fit_seconds_before = self.fit_seconds
            self._fit_started = None
        if trainer.is_global_zero and self.completed_tasks:
            self._report_matrix(trainer)

    # -- internals ------------------------------------------------------------------------------------
    def _finish_task(self, trainer: pl.Trainer, pl_module, t: int, in_loop: bool = True) -> None:
        dm = trainer.datamodule
        if not dm.scenario.online:
            pl_module.end_task(dm.tasks[t])
        upto = t + 2 if self.forward_transfer else t + 1
        result = self.evaluate(trainer, pl_module, dm.tasks[:upto])
        self.acc[t][: len(result["class_il"])] = result["class_il"]
        if dm.scenario.has_task_il:
            self.acc_task_il[t][: len(result["task_il"])] = result["task_il"]
        # the tasks trained so far, not the next one that forward transfer also evaluates
        self.confusion[t] = metrics.confusion_after_task(result["confusion"][: t + 1], dm.scenario.nested_test_sets)
        self.completed_tasks = t + 1
        self._log_task(trainer, pl_module, t, in_loop)

    def evaluate(self, trainer: pl.Trainer, pl_module, tasks, split: str = "test") -> dict[str, list[float]]:
        """Accuracy per task on its test examples, or with ``split="train"`` on the training-split
        examples in ``test_index`` (validation views, ``continual/validation.py``)."""
        dm = trainer.datamodule
        start = time.perf_counter()
        was_training = pl_module.training
        pl_module.eval()
        with trainer.precision_plugin.forward_context():
            result = evaluate_tasks(
                pl_module.predict_scores,
                functools.partial(dm.eval_batches, split=split),
                (dm.test_data if split == "test" else dm.train_data).y,
                tasks,
                pl_module.device,
                batch_size=self.eval_batch_size,
                limit_batches=self.eval_limit_batches,
                task_context=getattr(pl_module, "evaluate_task_context", None),
                num_classes=dm.dataset.num_classes,
            )
        pl_module.train(was_training)
        self.eval_seconds += time.perf_counter() - start
        return result

    def _log_task(self, trainer: pl.Trainer, pl_module, t: int, in_loop: bool) -> None:
        values = {"task": float(t), "cl/avg_acc": metrics.average_accuracy(self.acc)}
        if trainer.datamodule.scenario.has_task_il:
            values["cl/avg_acc_task_il"] = metrics.average_accuracy(self.acc_task_il)
            bwt_task_il = metrics.backward_transfer(self.acc_task_il)
            if bwt_task_il is not None:
                values["cl/bwt_task_il"] = bwt_task_il
        for j in range(t + 1):
            values[f"cl/acc_task_{j}"] = self.acc[t][j]
        for key, value in (
            ("cl/forgetting", metrics.forgetting(self.acc)),
            ("cl/bwt", metrics.backward_transfer(self.acc)),
            ("cl/fwt", metrics.forward_transfer(self.acc, self.initial_acc) if self.initial_acc else None),
        ):
            if value is not None:
                values[key] = value
        if in_loop:
            pl_module.log_dict(values, rank_zero_only=True)
        elif trainer.is_global_zero:  # on_train_end may not self.log: use the loggers
            for logger in trainer.loggers:
                logger.log_metrics(values, step=trainer.global_step)
        if trainer.is_global_zero:
            confusion = self.confusion[t]
            columns = ["true_class", *[f"predicted_{c}" for c in range(len(confusion))]]
            for logger in _wandb_loggers(trainer):
                rows = [[c, *row] for c, row in enumerate(confusion)]
                logger.log_table(key="cl/confusion_matrix", columns=columns, data=rows, step=trainer.global_step)

    def per_class_acc(self, num_classes: int) -> list[list[float | None]]:
        """Accuracy on each class after each completed task (None: no test example of it yet, or
        a task finished by a version that kept no confusion matrix)."""
        return [
            [None] * num_classes if m is None else metrics.per_class_accuracy(m)
            for m in self.confusion[: self.completed_tasks]
        ]

    def _report_matrix(self, trainer: pl.Trainer) -> None:
        n, done = len(self.acc), self.completed_tasks
        rows = [[t, *self.acc[t]] for t in range(done)]
        classes = trainer.datamodule.dataset.num_classes
        per_class = self.per_class_acc(classes)
        for logger in _wandb_loggers(trainer):
            logger.log_table(key="cl/acc_matrix", columns=["after_task", *[f"task_{j}" for j in range(n)]], data=rows)
            logger.log_table(
                key="cl/per_class_acc",
                columns=["after_task", *[f"class_{c}" for c in range(classes)]],
                data=[[t, *row] for t, row in enumerate(per_class)],
            )
        if self.heatmap:
            from sparseforge.continual.plots import save_accuracy_heatmap, save_confusion_heatmap

            run_dir, scenario = Path(trainer.default_root_dir), trainer.datamodule.scenario.name
            images = {
                "cl/acc_matrix_heatmap": save_accuracy_heatmap(
                    self.acc[:done], run_dir / "acc_matrix.png", title=f"{scenario}: class-IL accuracy R[t][j]"
                ),
                "cl/per_class_acc_heatmap": save_accuracy_heatmap(
                    per_class,
                    run_dir / "per_class_acc.png",
                    title=f"{scenario}: class-IL accuracy per class",
                    xlabel="class",
                ),
            }
            if self.confusion[done - 1] is not None:
                images["cl/confusion_matrix_heatmap"] = save_confusion_heatmap(
                    self.confusion[done - 1],
                    run_dir / "confusion_matrix.png",
                    title=f"{scenario}: confusion after task {done - 1}",
                )
            for logger in _wandb_loggers(trainer):
                for key, path in images.items():
                    logger.log_image(key=key, images=[str(path)])

    # -- results -------------------------------------------------------------------------------------
    def summary_section(self, trainer: pl.Trainer) -> dict[str, Any]:
        if not self.completed_tasks:
            return {}
        dm = trainer.datamodule
        R = self.acc
        fit_seconds = self.fit_seconds
        cl = {
            "scenario": dm.scenario.name,
            "n_tasks": dm.n_tasks,
            "task_classes": [list(task.classes) for task in dm.tasks],
            "completed_tasks": self.completed_tasks,
            "partial_last_task": self.partial_last_task,
            "acc_matrix": R,
            "per_class_acc": self.per_class_acc(dm.dataset.num_classes),
            "confusion_matrix": self.confusion[: self.completed_tasks],
            "avg_acc": metrics.average_accuracy(R),
            "forgetting": metrics.forgetting(R),
            "forgetting_mammoth": metrics.forgetting(R, include_final_row=True),
            "bwt": metrics.backward_transfer(R),
            "fwt": metrics.forward_transfer(R, self.initial_acc) if self.initial_acc else None,
            "initial_acc": self.initial_acc,
            "eval_seconds": self.eval_seconds,
            "fit_seconds": fit_seconds,
            "train_seconds": fit_seconds - self.eval_seconds,  # fit without the evaluations
            "eval_share": self.eval_seconds / fit_seconds if fit_seconds > 0 else None,
        }
        if dm.scenario.has_task_il:
            R_til = self.acc_task_il
            cl["acc_matrix_task_il"] = R_til
            cl["avg_acc_task_il"] = metrics.average_accuracy(R_til)
            cl["forgetting_task_il"] = metrics.forgetting(R_til)
            cl["bwt_task_il"] = metrics.backward_transfer(R_til)
            til_baseline = self.initial_acc_task_il
            cl["fwt_task_il"] = metrics.forward_transfer(R_til, til_baseline) if til_baseline else None
        else:  # blurry: R[t][t] is the accuracy on every class seen up to task t
            cl["acc_seen_classes"] = [R[t][t] for t in range(self.completed_tasks)]
        final = {"test/acc": cl["avg_acc"]}
        if dm.scenario.has_task_il and dm.scenario.name != "iid":
            final["test/acc_task_il"] = cl["avg_acc_task_il"]
            if dm.scenario.task_incremental:
                final["test/acc"] = cl["avg_acc_task_il"]
                final["test/acc_class_il"] = cl["avg_acc"]
        return {"cl": cl, "metrics": final}


def _wandb_loggers(trainer: pl.Trainer) -> list:
    from lightning.pytorch.loggers import WandbLogger

    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
