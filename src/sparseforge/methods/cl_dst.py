"""CL-with-DST (Yildirim et al., CPAL 2024): one sparse subnetwork per task, dynamic sparse
training inside each task, earlier tasks' weights frozen (task-incremental parameter isolation).

Per task ``t`` (the engine does the work: ``sparsity.task_masks``, ``sparsity.drop_grow``):

1. a fresh mask at ``density`` (uniform or ERK over every conv and linear weight, stem and
   classifier included; biases and normalisation excluded), drawn independently of earlier
   tasks' masks, so it overlaps them at random. The working weights are the merged weights times
   this mask: reused weights keep their values, weights no task used start at 0;
2. training with the cross-entropy over the task's classes. Weights that earlier tasks' final
   masks own are frozen: their gradients are zeroed and the optimizer step is undone there
   (``MaskSet`` gradient masks), so neither weight decay nor momentum can move them;
3. every ``update_frequency`` optimizer steps until the task ends, ``drop_and_grow`` with a drop
   rate annealed by a cosine from ``drop_rate`` to ``drop_rate_floor`` over the task's steps;
4. at the end (or at the epoch of best training accuracy, ``keep=best_train_acc``), the task's
   mask is stored and its weights merged in.

Task ``k`` is evaluated on the merged weights times ``mask_k`` (``evaluate_task_context``): the
task-IL accuracy restricts the logits to task ``k``'s classes, the class-IL column of the same
evaluation is the release's argmax over all classes. Every choice that differs from the release is
listed in docs/methods/cl-dst.md.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Any

import torch
from torch import nn

from sparseforge.continual.scenarios import Task
from sparseforge.errors import ConfigError
from sparseforge.methods.base import METHODS, ContinualMethod
from sparseforge.options import check
from sparseforge.sparsity.distributed import broadcast_masks
from sparseforge.sparsity.distributions import layer_nnz, weight_shapes
from sparseforge.sparsity.drop_grow import DropCriterion, GrowCriterion, drop_and_grow, needs_dense_grad
from sparseforge.sparsity.flops import FlopsAccountant
from sparseforge.sparsity.masks import MaskSet
from sparseforge.sparsity.placement import initial_masks
from sparseforge.sparsity.schedule import DropSchedule
from sparseforge.sparsity.targets import select_layers
from sparseforge.sparsity.task_masks import TaskMaskStore, dense_state, load_dense_state
from sparseforge.utils.seeding import seeded_generator


class Distribution(str, Enum):
    uniform = "uniform"
    erk = "erk"


class Keep(str, Enum):
    final = "final"  # the weights and mask of the task's last epoch
    best_train_acc = "best_train_acc"  # those of its epoch with the best training accuracy (the release)


@METHODS.register("cl_dst")
class CLDST(ContinualMethod):
    sparsity_masks = "own"  # one mask per task, kept here: the run's sparsity group must be dense

    @dataclass
    class Options(ContinualMethod.Options):
        #: Each task's density over all conv and linear weights (stem and classifier included).
        density: float = 0.2
        distribution: Distribution = Distribution.uniform
        drop: DropCriterion = DropCriterion.magnitude
        growth: GrowCriterion = GrowCriterion.random
        #: Optimizer steps between topology updates; updates run until the task ends.
        update_frequency: int = 400
        #: Drop rate at a task's start, cosine-annealed to ``drop_rate_floor`` at its end.
        drop_rate: float = 0.5
        drop_rate_floor: float = 0.005
        #: Which state of a task is kept: its last epoch, or its epoch of best training accuracy.
        keep: Keep = Keep.final
        #: Freeze the weights earlier tasks own (false: an ablation; tasks then overwrite each other).
        isolate: bool = True

        def __post_init__(self) -> None:
            d, r, f = self.density, self.drop_rate, self.drop_rate_floor
            check("method.density", 0.0 < d <= 1.0, f"must be in (0, 1], got {d}", "0 < density <= 1")
            check("method.update_frequency", self.update_frequency >= 1, f"must be >= 1, got {self.update_frequency}")
            check("method.drop_rate", 0.0 <= r < 1.0, f"must be in [0, 1), got {r}", "0 <= drop_rate < 1")
            check("method.drop_rate_floor", 0.0 <= f <= r, f"must be in [0, drop_rate], got {f}", f"0 .. {r}")

    def __init__(self, model: nn.Module, optimizer: partial, lr_scheduler: partial | None = None, **options: Any):
        super().__init__(model, optimizer, lr_scheduler, **options)
        o = self.options
        self.current_ce_classes = "task"  # the release trains on the task's slice of the logits
        self.layers = select_layers(model, config_prefix="method")  # every conv and linear weight
        self.schedule = DropSchedule(o.update_frequency, o.drop_rate, "cosine", 1.0, o.drop_rate_floor)
        self.store = TaskMaskStore()
        self.masks: MaskSet | None = None  # the current task's
        self.steps_in_task = 0
        self.horizon = 1  # optimizer steps of the current task
        self.updates_in_task = 0
        self.moved_in_task = 0
        self.update_log: list[dict[str, Any]] = []  # per finished task: updates, weights moved, regrown
        self.best: dict[str, Any] | None = None  # keep=best_train_acc: the best epoch's state so far
        self.last_scored_epoch = -1
        self.flops: FlopsAccountant | None = None
        self._pending_flops_state: dict | None = None
        self._dense_grads: dict[str, torch.Tensor | None] | None = None
        self._densities: tuple[int, dict[str, float]] | None = None

    # -- set-up -------------------------------------------------------------------------------------
    def check_setup(self, datamodule) -> None:
        super().check_setup(datamodule)
        if not datamodule.scenario.task_incremental:
            raise ConfigError(
                "scenario", "cl_dst picks each task's subnetwork by its task id at test time", "scenario=task_il"
            )
        self.layer_counts()  # a density that leaves a layer empty fails here, before any work
        if self.options.growth is GrowCriterion.momentum and not self._optimizer_keeps_momentum():
            raise ConfigError(
                "method.growth",
                "momentum growth reads the optimizer's momentum, but this optimizer keeps none",
                "optimizer=adam or adamw, or sgd with momentum > 0",
            )

    def _optimizer_keeps_momentum(self) -> bool:
        probe = nn.Parameter(torch.zeros(2))
        optimizer = self.optimizer_factory(params=[probe])
        probe.grad = torch.ones(2)
        optimizer.step()
        state = optimizer.state.get(probe, {})
        return {"exp_avg", "exp_avg_sq"} <= state.keys() or state.get("momentum_buffer") is not None

    def layer_counts(self) -> dict[str, int]:
        o = self.options
        return layer_nnz(weight_shapes(self.layers), o.density, o.distribution.value, config_prefix="method")

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.masks is not None:
            self.masks.follow_weights()
        self.store.to(self.device)
        if self.flops is None:
            self.flops = FlopsAccountant(self.model, list(self.layers))
            if self._pending_flops_state is not None:
                self.flops.load_state_dict(self._pending_flops_state)

    # -- tasks --------------------------------------------------------------------------------------
    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        o = self.options
        nnz = self.layer_counts()
        seed = int(torch.randint(2**62, (1,), generator=seeded_generator(o.seed, task.id, 0x5EED)))
        masks = broadcast_masks(initial_masks(self.layers, nnz, "random", seed))
        if self.store.merged:  # start from the merged weights (weights no task used hold 0)
            with torch.no_grad():
                for name, module in self.layers.items():
                    module.weight.copy_(self.store.merged[name])
        self.masks = MaskSet(self.layers, masks, nnz)
        if o.isolate and self.store.used:
            self.masks.set_grad_masks({name: ~used for name, used in self.store.used.items()})
        self.masks.apply_()
        steps_per_epoch = -(-self.trainer.num_training_batches // max(self.trainer.accumulate_grad_batches, 1))
        self.horizon = max(1, steps_per_epoch * self.trainer.datamodule.scenario.epochs_per_task)
        self.steps_in_task = self.updates_in_task = self.moved_in_task = 0
        self.best, self.last_scored_epoch = None, -1

    def end_task(self, task: Task) -> None:
        # The task loop ends a task before this module's on_train_epoch_end: score the last epoch here.
        self._score_epoch(self.trainer.current_epoch)
        if self.best is not None:
            self._restore(self.best)
        sparse = {name: module.weight for name, module in self.layers.items()}
        self.store.add(task.id, self.masks.masks, sparse, dense_state(self.model, sparse), fired=self.masks.fired)
        self.update_log.append(
            {
                "task": task.id,
                "updates": self.updates_in_task,
                "moved": self.moved_in_task,
                "kept_epoch": None if self.best is None else self.best["epoch"],
            }
        )
        self.best = None  # capacity per task: summary.json (sparsity.tasks)

    def evaluate_task_context(self, task: Task) -> AbstractContextManager:
        """Task ``task`` is scored on the merged weights times its own mask (a task-id oracle);
        a task not stored yet (the current one, or a later one for FWT) on the working weights."""
        if task.id not in self.store:
            return nullcontext()
        return self.store.use_task(self.model, self.layers, task.id)

    # -- steps --------------------------------------------------------------------------------------
    def on_before_optimizer_step(self, optimizer) -> None:
        # after backward (gradients all-reduced) and AMP unscaling, before clipping
        if self.masks is None:
            return
        o = self.options
        if needs_dense_grad(o.drop, o.growth) and self.schedule.is_update_step(self.steps_in_task + 1, self.horizon):
            self._dense_grads = {
                name: None if module.weight.grad is None else module.weight.grad.detach().clone()
                for name, module in self.layers.items()
            }
        # Frozen weights get no gradient; pruned ones keep theirs, so the optimizer's momentum
        # follows the dense gradient there (momentum growth reads it). after_step zeroes them.
        self.masks.before_step(mask_pruned=False)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.masks is None:
            return
        self.masks.after_step()  # undo any move of a frozen weight, zero the pruned ones
        self.steps_in_task += 1
        self._charge_flops()
        if self.schedule.is_update_step(self.steps_in_task, self.horizon):
            self._update(getattr(optimizer, "optimizer", optimizer))
        self._dense_grads = None

    def _update(self, optimizer: torch.optim.Optimizer) -> None:
        o = self.options
        rate = self.schedule.fraction_at(self.steps_in_task, self.horizon)
        frozen = self.store.used if o.isolate else None
        key = (o.seed, self.current_task, self.updates_in_task)
        new_masks, counts = drop_and_grow(self.masks, frozen, rate, o.drop, o.growth, self._dense_grads, optimizer, key)
        self.masks.set_masks(broadcast_masks(new_masks), optimizer)
        self.masks.check()
        moved = sum(c["moved"] for c in counts.values())
        self.updates_in_task += 1
        self.moved_in_task += moved
        self.log_dict({"cl_dst/drop_rate": rate, "cl_dst/moved": float(moved)}, rank_zero_only=True)

    def _charge_flops(self) -> None:
        if self.flops is None:
            return
        version = self.masks.version
        if self._densities is None or self._densities[0] != version:
            self._densities = (version, self.masks.density_per_layer())
        densities = self._densities[1]
        o = self.options
        dense_now = o.growth is GrowCriterion.momentum or self._dense_grads is not None
        self.flops.step(densities, {name: 1.0 for name in densities} if dense_now else None)

    # -- keep=best_train_acc ------------------------------------------------------------------------
    def on_train_epoch_end(self) -> None:
        self._score_epoch(self.current_epoch)
        super().on_train_epoch_end()

    def _score_epoch(self, epoch: int) -> None:
        """keep=best_train_acc: remember this epoch's state if its training accuracy is the best
        of the task so far (strictly better, as the release)."""
        if self.options.keep is not Keep.best_train_acc or self.masks is None or epoch == self.last_scored_epoch:
            return
        self.last_scored_epoch = epoch
        acc = self.epoch_train_accuracy()
        if acc is None:
            return
        value = float(acc)
        if self.best is None or value > self.best["acc"]:
            sparse = {name: module.weight for name, module in self.layers.items()}
            self.best = {
                "acc": value,
                "epoch": epoch,
                "weights": {name: w.detach().clone() for name, w in sparse.items()},
                "dense": dense_state(self.model, sparse),
                "masks": {name: m.clone() for name, m in self.masks.masks.items()},
            }

    @torch.no_grad()
    def _restore(self, best: dict[str, Any]) -> None:
        fired = self.masks.fired
        self.masks = MaskSet(self.layers, best["masks"], self.masks.target_nnz)
        self.masks.fired = fired  # what the task explored, for its capacity record
        for name, module in self.layers.items():
            module.weight.copy_(best["weights"][name])
        load_dense_state(self.model, best["dense"])

    # -- state --------------------------------------------------------------------------------------
    def method_state(self) -> dict[str, Any]:
        def cpu(tree):
            if isinstance(tree, dict):
                return {k: cpu(v) for k, v in tree.items()}
            return tree.detach().cpu().clone() if torch.is_tensor(tree) else tree

        return {
            "cl_dst": {
                "store": self.store.state_dict(),
                "masks": None if self.masks is None else self.masks.state_dict(),
                "steps_in_task": self.steps_in_task,
                "horizon": self.horizon,
                "updates_in_task": self.updates_in_task,
                "moved_in_task": self.moved_in_task,
                "update_log": [dict(e) for e in self.update_log],
                "best": cpu(self.best),
                "last_scored_epoch": self.last_scored_epoch,
                "flops": None if self.flops is None else self.flops.state_dict(),
            }
        }

    def load_method_state(self, state: dict[str, Any]) -> None:
        if "cl_dst" not in state:
            return
        s = state["cl_dst"]
        self.store.load_state_dict(s["store"])
        if s["masks"] is not None:
            self.masks = MaskSet(self.layers, s["masks"]["masks"], s["masks"]["target_nnz"])
            self.masks.load_state_dict(s["masks"])
        self.steps_in_task, self.horizon = int(s["steps_in_task"]), int(s["horizon"])
        self.updates_in_task, self.moved_in_task = int(s["updates_in_task"]), int(s["moved_in_task"])
        self.update_log = [dict(e) for e in s["update_log"]]
        self.best = s["best"]
        self.last_scored_epoch = int(s["last_scored_epoch"])
        if s["flops"] is not None:
            if self.flops is None:
                self._pending_flops_state = s["flops"]
            else:
                self.flops.load_state_dict(s["flops"])

    # -- summary ------------------------------------------------------------------------------------
    def summary_section(self, trainer) -> dict[str, Any]:
        o = self.options
        capacity = self.store.capacity
        sparsity: dict[str, Any] = {
            "method": "cl_dst",
            "target_density": o.density,
            "distribution": o.distribution.value,
            "layer_nnz": self.layer_counts(),
        }
        if capacity:
            sparsity.update(
                density=sum(c["density"] for c in capacity) / len(capacity),  # each task's subnetwork
                capacity_used=self.store.used_share(),  # the share of weights some task owns
                owned_mean=sum(c["owned"] for c in capacity) / len(capacity),
                reused_mean=sum(c["reused"] for c in capacity) / len(capacity),
                released_mean=sum(c["released"] for c in capacity) / len(capacity),
                tasks=[dict(c) for c in capacity],
            )
        section: dict[str, Any] = {
            "sparsity": sparsity,
            "cl_dst": {
                "drop": o.drop.value,
                "growth": o.growth.value,
                "update_frequency": o.update_frequency,
                "drop_rate": [o.drop_rate, o.drop_rate_floor],
                "keep": o.keep.value,
                "isolate": o.isolate,
                "updates": [dict(e) for e in self.update_log],
                "evaluation": {
                    "acc_matrix_task_il": "merged weights x the task's mask, argmax over the task's classes",
                    "acc_matrix": "merged weights x the task's mask, argmax over all classes (the release's)",
                },
            },
        }
        flops = self.flops
        if flops is not None and flops.dense_total:
            world = trainer.world_size
            per_task = [self.store.masks[t] for t in self.store.task_ids]
            inference = [
                flops.forward_flops({n: float(m.count_nonzero()) / m.numel() for n, m in masks.items()}) / flops.f_dense
                for masks in per_task
            ]
            section["flops"] = {
                "train_total": flops.train_total * world,
                "train_dense_total": flops.dense_total * world,
                "train_relative_to_dense": flops.train_relative_to_dense,
                # one task's forward, averaged over the tasks' subnetworks
                "inference_relative_to_dense": sum(inference) / len(inference) if inference else None,
                "samples_trained": flops.samples_trained * world,
            }
        return section
