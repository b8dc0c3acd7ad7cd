"""Validation accuracy after every epoch and, for one-task runs, the best-validation weights.

Active when ``data.val_fraction > 0`` (the datamodule then holds out part of every task's
training examples, ``continual/validation.py``). After every finished epoch the accuracy on the
validation examples of the tasks seen so far is logged as ``val/acc``.

With one task (iid, or any scenario cut into one task) the run also selects a model: it keeps a
copy of the weights of the epoch with the best validation accuracy (the first on ties) and at
the end evaluates the test set with them, next to the final weights (``test/acc``, unchanged):
``best_val/acc``, ``best_val/epoch`` (0-based, as Lightning counts) and ``test/acc_at_best_val``.
With several tasks an earlier epoch's weights have not learnt the later tasks, so there is no
model to select: such runs report ``val/acc`` only.

The copy lives in memory (on the CPU) and in this callback's state, so every checkpoint carries
the best weights of the epochs it has seen: a resumed run continues with exactly the best it had,
with no second file that a kill could leave out of step with ``last.ckpt``. The price is one more
copy of the weights in each checkpoint.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from sparseforge.continual.validation import validation_view
from sparseforge.lightning.checkpoint import epoch_cut_short


class BestValidation(pl.Callback):
    def __init__(self) -> None:
        self.val_acc: list[float | None] = []  # per epoch; None for an epoch cut short
        self.best_acc: float | None = None
        self.best_epoch: int | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.test_acc_at_best: float | None = None
        self.tested_epoch: int | None = None  # the best epoch test_acc_at_best belongs to

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "val_acc": self.val_acc,
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "best_weights": self.best_weights,
            "test_acc_at_best": self.test_acc_at_best,
            "tested_epoch": self.tested_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    # -- hooks ----------------------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        dm = trainer.datamodule
        if not dm.has_validation or epoch_cut_short(trainer):
            return
        epoch = trainer.current_epoch
        acc = self._val_accuracy(trainer, pl_module, dm.task_of_epoch(epoch))
        self.val_acc += [None] * (epoch + 1 - len(self.val_acc))
        self.val_acc[epoch] = acc
        values = {"val/acc": acc}
        if _selects(dm):
            if self.best_acc is None or acc > self.best_acc:
                self.best_acc, self.best_epoch = acc, epoch
                self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
            values["best_val/acc"] = self.best_acc
            if epoch + 1 >= trainer.max_epochs:  # before the final checkpoint, so a resume has it
                self._test_best(trainer, pl_module)
        pl_module.log_dict(values, rank_zero_only=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        # A run stopped early (max_steps, max_time) has not tested its best weights yet.
        if _selects(trainer.datamodule) and self.best_epoch is not None and self.tested_epoch != self.best_epoch:
            self._test_best(trainer, pl_module)

    # -- internals ------------------------------------------------------------------------------------
    def _val_accuracy(self, trainer: pl.Trainer, pl_module, t: int) -> float:
        """Mean accuracy over the seen tasks that have validation examples, scored as test/acc is."""
        dm = trainer.datamodule
        tasks = [validation_view(task) for task in dm.tasks[: t + 1] if len(task.val_index)]
        result = _task_loop(trainer).evaluate(trainer, pl_module, tasks, split="train")
        accs = result["task_il" if dm.scenario.task_incremental else "class_il"]
        return sum(accs) / len(accs)

    def _test_best(self, trainer: pl.Trainer, pl_module) -> None:
        """Test accuracy of the best weights, the final weights put back afterwards."""
        dm = trainer.datamodule
        final = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        pl_module.load_state_dict(self.best_weights)
        try:
            result = _task_loop(trainer).evaluate(trainer, pl_module, dm.tasks)
        finally:
            pl_module.load_state_dict(final)
        self.test_acc_at_best = result["task_il" if dm.scenario.task_incremental else "class_il"][0]
        self.tested_epoch = self.best_epoch

    # -- results -------------------------------------------------------------------------------------
    def summary_section(self, trainer: pl.Trainer) -> dict[str, Any]:
        dm = trainer.datamodule
        measured = [a for a in self.val_acc if a is not None]
        if not dm.has_validation or not measured:
            return {}
        section = {
            "fraction": dm.val_fraction,
            "n_val": len(torch.unique(torch.cat([t.val_index for t in dm.tasks]))),  # tasks may share examples
            "acc_per_epoch": self.val_acc,
            "model_selection": _selects(dm),
        }
        values: dict[str, Any] = {"val/acc": measured[-1]}
        if _selects(dm) and self.best_epoch is not None:
            values["best_val/acc"] = self.best_acc
            values["best_val/epoch"] = self.best_epoch
            values["test/acc_at_best_val"] = self.test_acc_at_best
        return {"validation": section, "metrics": values}


def _selects(dm) -> bool:
    """Whether the run selects a model by validation accuracy: one task, with validation data."""
    return dm.has_validation and dm.n_tasks == 1


def _task_loop(trainer: pl.Trainer):
    from sparseforge.lightning.continual_loop import ContinualLoop

    return next(c for c in trainer.callbacks if isinstance(c, ContinualLoop))
