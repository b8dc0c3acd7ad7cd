"""PackNet (Mallya & Lazebnik 2018): pack the tasks into one network by iterative pruning.

Every conv/linear weight is either owned by one task or free. Task ``t``:

1. trains the free weights only (the owned ones are frozen: their gradients are zeroed and their
   values restored after each optimizer step, so momentum and weight decay cannot move them);
2. then prunes: in every layer but the classifier, the ``prune_fraction`` of its free weights with
   the smallest magnitude are set to zero and released for later tasks (default: equal shares,
   task t of T keeps 1/(T - t) of the weights still free, so each task owns 1/T of every layer);
3. retrains the weights it kept for ``retrain_epochs`` (the task's last epochs; 0: prune at the
   task's end), and finally owns them.

Task k is evaluated with the weights of tasks 0..k only (``evaluate_task_context``: later tasks'
weights are zeroed for the duration), so what it computes never changes after it ends and its
task-IL accuracy cannot drop. The classifier is split per task as PackNet's separate heads: its
rows for task t's classes become active at task t (starting from zero, like any released weight),
train with the task's cross-entropy (over its own classes), and are owned by it. Biases and
normalisation layers are shared and, as in the paper, trained on the first task only (from the second
task on their gradients are dropped before each step, so no optimizer moves them); batch-norm
statistics are frozen with them (those layers stay in eval mode from the second task on).

The masks are a ``MaskSet`` of the method's own (active weights; the owned ones as gradient
masks), so the run's sparsity group must be dense (``sparsity_masks = "own"``). The ownership
map (one int16 per weight, -1 for free) and the masks are method state. Task-IL only: it needs
the task id at test time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparseforge.errors import ConfigError
from sparseforge.methods.base import METHODS, ContinualMethod
from sparseforge.models.parts import classifier
from sparseforge.options import check
from sparseforge.sparsity.distributed import broadcast_masks
from sparseforge.sparsity.masks import MaskSet
from sparseforge.sparsity.placement import top_n_mask
from sparseforge.sparsity.targets import prunable_layers

FREE = -1  # owner of a weight no task has kept yet


@METHODS.register("packnet")
class PackNet(ContinualMethod):
    sparsity_masks = "own"

    @dataclass
    class Options(ContinualMethod.Options):
        #: Fraction of a task's free weights it releases when it prunes; null: equal shares (each
        #: of T tasks owns 1/T of every layer). The paper uses 0.5 to 0.75.
        prune_fraction: float | None = None
        #: Epochs a task retrains after pruning (its last ones); null: half its epochs, rounded down.
        retrain_epochs: int | None = None

        def __post_init__(self) -> None:
            f, r = self.prune_fraction, self.retrain_epochs
            check("method.prune_fraction", f is None or 0 <= f < 1, f"must be null or in [0, 1), got {f}")
            check("method.retrain_epochs", r is None or r >= 0, f"must be null or >= 0, got {r}")

    def __init__(self, model: nn.Module, optimizer, lr_scheduler=None, **options: Any):
        super().__init__(model, optimizer, lr_scheduler, **options)
        self.current_ce_classes = "task"  # one head per task
        head = classifier(model, "PackNet")
        layers = prunable_layers(model)
        self.head_name = next(name for name, module in layers.items() if module is head)
        self.masks = MaskSet(layers, {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in layers.items()})
        self.owner = {n: torch.full(m.weight.shape, FREE, dtype=torch.int16) for n, m in layers.items()}
        self.pruned_task = -1
        weights = {id(m.weight) for m in layers.values()}
        self.shared = [p for p in model.parameters() if id(p) not in weights]  # biases, norm layers
        self.norm_layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def check_setup(self, datamodule) -> None:
        super().check_setup(datamodule)
        if not datamodule.scenario.task_incremental:
            raise ConfigError(
                "scenario", "packnet evaluates each task with its own weights: it needs the task id", "scenario=task_il"
            )
        epochs, r = datamodule.scenario.epochs_per_task, self.options.retrain_epochs
        if r is not None and r >= epochs:
            raise ConfigError(
                "method.retrain_epochs",
                f"{r} retraining epoch(s) leave no training epoch in a task of scenario.epochs_per_task={epochs}",
                f"0..{epochs - 1}",
            )

    def retrain_epochs(self) -> int:
        r = self.options.retrain_epochs
        return self.datamodule.scenario.epochs_per_task // 2 if r is None else r

    # -- task boundaries ----------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self.masks.follow_weights()
        self.masks.apply_()

    def begin_task(self, task) -> None:
        super().begin_task(task)
        active = {n: torch.ones_like(m) for n, m in self.masks.masks.items()}
        active[self.head_name] = self.head_rows(task.id + 1)
        # weights released by earlier tasks come back at zero; the head of later tasks stays off
        self.masks.set_masks(active, target_nnz={n: int(m.count_nonzero()) for n, m in active.items()})
        self.masks.set_grad_masks({n: self._owner(n) == FREE for n in self.masks})

    def on_train_epoch_start(self) -> None:
        dm = self.datamodule
        r = self.retrain_epochs()
        if r and dm.epoch_in_task(self.current_epoch) == dm.scenario.epochs_per_task - r:
            self.prune(self.current_task)

    def end_task(self, task) -> None:
        super().end_task(task)
        self.prune(task.id)  # no-op when the task retrained after pruning
        for n in self.masks:
            owner = self._owner(n)
            owner[self.masks[n] & (owner == FREE)] = task.id
        self.masks.set_grad_masks({n: self._owner(n) == FREE for n in self.masks})

    @torch.no_grad()
    def prune(self, t: int) -> None:
        """Release the smallest free weights of task ``t`` in every layer but the classifier (once)."""
        if self.pruned_task >= t:
            return
        fraction = self.options.prune_fraction
        if fraction is None:
            fraction = 1 - 1 / (self.datamodule.n_tasks - t)
        kept = {}
        for n in self.masks:
            if n == self.head_name:
                continue
            active = self.masks[n]
            candidates = active & (self._owner(n) == FREE)
            count = int(candidates.count_nonzero())
            scores = self.masks.weight(n).detach().abs().masked_fill(~candidates, float("-inf"))
            kept[n] = (active & ~candidates) | top_n_mask(scores, count - round(fraction * count))
        kept = broadcast_masks(kept)
        optimizer = self.trainer.optimizers[0] if self._trainer is not None and self.trainer.optimizers else None
        self.masks.set_masks(kept, optimizer, target_nnz={n: int(m.count_nonzero()) for n, m in kept.items()})
        self.pruned_task = t

    # -- training -----------------------------------------------------------------------------------
    def observe(self, batch) -> torch.Tensor:
        if self.current_task > 0:  # shared statistics stay those of the first task
            for m in self.norm_layers:
                m.eval()
        return super().observe(batch)

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.current_task > 0:  # shared parameters: no gradient, so the optimizer skips them whole
            for p in self.shared:
                p.grad = None
        self.masks.before_step()  # no gradient for released or owned weights; owned values kept

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.masks.after_step()  # owned weights back to their values, released ones at zero

    # -- evaluation ---------------------------------------------------------------------------------
    @contextmanager
    def evaluate_task_context(self, task) -> Iterator[None]:
        """The network of task ``task.id``: the weights of later tasks (and, for a past task, those
        the current task is training) are zero while it is evaluated."""
        hidden = {}
        with torch.no_grad():
            for n in self.masks:
                owner = self._owner(n)
                hide = owner > task.id
                if task.id < self.current_task:
                    hide |= owner == FREE
                if bool(hide.any()):
                    weight = self.masks.weight(n)
                    hidden[n] = (hide, weight[hide].clone())
                    weight.masked_fill_(hide, 0.0)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, (hide, values) in hidden.items():
                    self.masks.weight(n)[hide] = values

    # -- helpers, state, summary --------------------------------------------------------------------
    def head_rows(self, stop: int) -> torch.Tensor:
        """The classifier weights of the classes of tasks ``0..stop-1``."""
        weight = self.masks.weight(self.head_name)
        rows = torch.zeros(weight.shape[0], dtype=torch.bool)
        for task in self.tasks[:stop]:
            rows[list(task.classes)] = True
        return rows[:, None].expand(weight.shape).to(weight.device).clone()

    def _owner(self, name: str) -> torch.Tensor:
        device = self.masks[name].device
        if self.owner[name].device != device:
            self.owner[name] = self.owner[name].to(device)
        return self.owner[name]

    def method_state(self) -> dict[str, Any]:
        return {
            "masks": self.masks.state_dict(),
            "owner": {n: o.cpu().clone() for n, o in self.owner.items()},
            "pruned_task": self.pruned_task,
        }

    def load_method_state(self, state: dict[str, Any]) -> None:
        if "masks" not in state:
            return
        self.masks.load_state_dict(state["masks"])
        self.owner = {n: o.clone() for n, o in state["owner"].items()}
        self.pruned_task = int(state["pruned_task"])

    def summary_section(self, trainer) -> dict[str, Any]:
        total = sum(o.numel() for o in self.owner.values())
        owners = torch.cat([o.flatten().long() for o in self.owner.values()])
        per_task = torch.bincount(owners[owners >= 0], minlength=trainer.datamodule.n_tasks)
        return {
            "packnet": {
                "weights_per_task": (per_task.double() / total).tolist(),
                "free": float((owners == FREE).sum()) / total,
                "classifier": self.head_name,
            }
        }
