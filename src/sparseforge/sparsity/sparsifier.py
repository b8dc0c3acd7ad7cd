"""``Sparsifier``: the controller a training loop drives (plain PyTorch, no Lightning).

    sparsifier = Sparsifier(model, optimizer, density=0.1, distribution="erk",
                            update_rule="rigl", delta_t=100, total_steps=len(loader) * epochs)
    for x, y in loader:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        sparsifier.before_optimizer_step()   # dense gradient for RigL, then mask the gradients
        optimizer.step()
        sparsifier.after_optimizer_step()    # zero pruned weights, count FLOPs, update on schedule

It owns the masks (``MaskSet``), the update rule, the drop-fraction schedule with its own step
counter, and a ``FlopsAccountant``. Epoch-triggered rules (SparCL's ``tdm``) act through
``epoch_update(epoch_in_task)`` instead of the step schedule. An optional ``gradient_policy``
(SparCL's ``DynamicGradientMasking``) sets the gradient masks before each step's masking, and
the FLOPs of the weight gradients follow it. Everything that must survive a restart is in
``state_dict()``. Order inside an update step: the optimizer step is taken first, then the
topology changes (as in the PyTorch RigL ports and TF SET); grown weights start at 0 with zeroed
optimizer state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sparseforge.sparsity.backends import SparseExecution
from sparseforge.sparsity.distributed import broadcast_masks
from sparseforge.sparsity.flops import FlopsAccountant
from sparseforge.sparsity.masks import MaskInvariantError, MaskSet
from sparseforge.sparsity.options import SparsityOptions, rule_class
from sparseforge.sparsity.placement import initial_masks
from sparseforge.sparsity.rules import UpdateRule
from sparseforge.sparsity.schedule import DropSchedule
from sparseforge.utils import distributed
from sparseforge.utils.allocator import release_free_heap
from sparseforge.utils.tensors import all_finite


class Sparsifier:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        options: SparsityOptions | None = None,
        *,
        total_steps: int | None = None,
        example_input: torch.Tensor | None = None,
        account_flops: bool = True,
        **overrides: Any,
    ):
        if options is None:
            options = SparsityOptions.from_values(overrides)
        elif overrides:
            options = options.replace(**overrides)
        self.options = options
        self.model = model
        self.optimizer = optimizer
        self.seed = options.seed
        self.schedule = DropSchedule(
            options.delta_t, options.drop_fraction, options.drop_schedule, options.end_fraction
        )
        self.horizon = total_steps
        self.step = 0  # optimizer steps taken, whole run
        self.schedule_start = 0  # step at which the current schedule began (task scope restarts it)
        self.updates_done = 0
        self.skipped_updates = 0
        self.grown_total = 0
        self.dropped_total = 0
        self.last_update: dict[str, Any] = {}
        self.history: list[list[float]] = []  # [step, grown, dropped, drop_fraction] per update
        self.gradient_policy = None  # e.g. DynamicGradientMasking; set by the method that uses it
        self._prepared = False
        self._dense_grad_step = False
        self._nnz_cache: tuple[int, dict[str, int]] | None = None

        self.masks: MaskSet | None = None
        self.rule: UpdateRule | None = None
        self.execution: SparseExecution | None = None  # a sparse execution backend (options.backend)
        if not options.is_dense:
            layers = options.sparse_layers(model)
            nnz = options.layer_nnz(layers)
            masks = broadcast_masks(initial_masks(layers, nnz, options.placement, options.seed))
            self.masks = MaskSet(layers, masks, nnz, cache_factors=options.mask_cache)
            del masks  # MaskSet holds its own copies
            self.rule = rule_class(options.update_rule)(options.rule)
            # layers about to be compressed drop their pruned entries: no float mask copies for them
            self.masks.apply_(keep_copies=options.backend == "masked")
            if options.rescale_init:
                with torch.no_grad():
                    for name, n in nnz.items():
                        self.masks.weight(name).mul_((self.masks.numel(name) / n) ** 0.5)
            self.check()
            if options.backend != "masked":
                self.execution = SparseExecution(self, options.backend, optimizer)
        self.flops = FlopsAccountant(model, self.sparse_layer_names, example_input) if account_flops else None

    # -- what is sparse -----------------------------------------------------------------------------
    @property
    def sparse_layer_names(self) -> list[str]:
        return list(self.masks) if self.masks is not None else []

    def layer_nnz(self) -> dict[str, int]:
        """Exact non-zero count of every sparse layer (cached between topology changes)."""
        if self.masks is None:
            return {}
        if self._nnz_cache is None or self._nnz_cache[0] != self.masks.version:
            self._nnz_cache = (self.masks.version, self.masks.nnz_per_layer())
        return self._nnz_cache[1]

    def layer_densities(self) -> dict[str, float]:
        return {name: n / self.masks.numel(name) for name, n in self.layer_nnz().items()}

    def global_density(self) -> float:
        """Non-zeros over the weights of the sparse layers (the budget ``density`` refers to)."""
        if self.masks is None:
            return 1.0
        return sum(self.layer_nnz().values()) / sum(self.masks.numel(n) for n in self.masks)

    def model_density(self) -> float:
        """Non-zeros over every parameter of the model (dense layers, biases and norms included)."""
        if self.masks is None:
            return 1.0
        total = sum(p.numel() for p in self.model.parameters())
        total += sum(layer.plan.numel - layer.plan.nnz for layer in self.masks.compressed.values())
        pruned = sum(self.masks.numel(n) - k for n, k in self.layer_nnz().items())
        return (total - pruned) / total

    # -- schedule -----------------------------------------------------------------------------------
    def set_total_steps(self, total_steps: int) -> None:
        self.horizon = int(total_steps)

    def restart_schedule(self, horizon: int) -> None:
        """Begin a new schedule of ``horizon`` steps now (``schedule_scope=task``)."""
        self.schedule_start = self.step
        self.horizon = int(horizon)

    def is_update_step(self, step: int) -> bool:
        if self.rule is None or not self.rule.changes_topology or self.rule.trigger != "step":
            return False
        if self.horizon is None:
            raise ValueError(
                f"the {self.options.update_rule} rule needs the schedule length: pass Sparsifier(total_steps=...) "
                "or call set_total_steps()"
            )
        return self.schedule.is_update_step(step - self.schedule_start, self.horizon)

    def drop_fraction_at(self, step: int) -> float:
        return self.schedule.fraction_at(step - self.schedule_start, self.horizon or 1)

    # -- the two calls around optimizer.step() ------------------------------------------------------
    @torch.no_grad()
    def before_optimizer_step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """After backward (and AMP unscaling), before ``optimizer.step()``."""
        if optimizer is not None:
            self.optimizer = optimizer
        if self.masks is None:
            return
        if self.execution is not None:
            self.execution.before_step(self.optimizer)
        if self.gradient_policy is not None:
            self.gradient_policy.before_step(self.masks)
        upcoming = self.step + 1
        update_next = self.is_update_step(upcoming)
        if update_next or self.rule.observes_every_step:
            grads = {name: self.masks.grad(name) for name in self.masks}
            if self.rule.observes_every_step:
                self.rule.observe(self, grads)
            if update_next:
                finite = all(g is None or all_finite(g) for g in grads.values())
                if distributed.all_ranks_agree(finite):
                    self.masks.pause_factor_cache()  # room for the rule's scores, kept until the change
                    self.rule.prepare(self, self.drop_fraction_at(upcoming), grads)
                    self._prepared = True
                    self._dense_grad_step = self.rule.needs_dense_grad
                else:  # an AMP step with inf/NaN gradients: the scaler skips it, so do we
                    self.skipped_updates += 1
            del grads
        if self.execution is not None:  # read (and maybe overwritten by the rule): free them before the step
            self.execution.release_dense_grads()
        self.masks.before_step()

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any] | None:
        """After ``optimizer.step()``, before the next forward. Returns the update's stats, if any."""
        if optimizer is not None:
            self.optimizer = optimizer
        if self.masks is None and self.execution is None:  # dense: count the step and its FLOPs
            self.step += 1
            if self.flops is not None:
                self.flops.step()
            return None
        with torch.no_grad():
            return self._after_masked_step()

    def _after_masked_step(self) -> dict[str, Any] | None:
        if self.masks is not None:
            self.masks.after_step()
        self.step += 1
        if self.flops is not None:
            if self._dense_grad_step:
                grad_density = {n: 1.0 for n in self.sparse_layer_names}
            elif self.gradient_policy is not None and self.masks is not None:
                grad_density = self.gradient_policy.weight_grad_density(self.masks)
            else:
                grad_density = None
            self.flops.step(self.layer_densities(), grad_density)
        stats = None
        if self._prepared:
            fraction = self.drop_fraction_at(self.step)
            stats = self.apply_masks(self.rule.propose(self, fraction), drop_fraction=fraction)
        self._prepared = self._dense_grad_step = False
        if self.execution is not None:
            self.execution.after_step()
        return stats

    def update_now(
        self,
        drop_fraction: float | None = None,
        dense_grads: Mapping[str, torch.Tensor | None] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> dict[str, Any] | None:
        """An off-schedule update with this sparsifier's rule (epoch-triggered rules, tests)."""
        if self.masks is None or not self.rule.changes_topology:
            return None
        fraction = self.options.drop_fraction if drop_fraction is None else drop_fraction
        self.rule.prepare(self, fraction, dense_grads or {})
        return self.apply_masks(self.rule.propose(self, fraction), optimizer=optimizer, drop_fraction=fraction)

    def epoch_update(self, epoch_in_task: int, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any] | None:
        """At the start of an epoch: run an epoch-triggered rule (``tdm``). Returns the update's stats."""
        if self.masks is None or self.rule.trigger != "epoch":
            return None
        proposal = self.rule.epoch_proposal(self, epoch_in_task)
        if proposal is None:
            return None
        new_masks, target_nnz, restart = proposal
        stats = self.apply_masks(new_masks, optimizer, target_nnz=target_nnz, restart=restart)
        stats["epoch_in_task"] = epoch_in_task
        return stats

    @torch.no_grad()
    def apply_masks(
        self,
        new_masks: Mapping[str, torch.Tensor] | None,
        optimizer: torch.optim.Optimizer | None = None,
        target_nnz: Mapping[str, int] | None = None,
        drop_fraction: float | None = None,
        restart: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """Install new masks (from any rule): rank 0's win, new weights start at 0, counts checked."""
        new_masks = broadcast_masks(new_masks or {})
        per_layer = self.masks.set_masks(new_masks, optimizer or self.optimizer, target_nnz, restart=restart)
        self.updates_done += 1
        grown = sum(s["grown"] for s in per_layer.values())
        dropped = sum(s["dropped"] for s in per_layer.values())
        self.grown_total += grown
        self.dropped_total += dropped
        self.history.append([self.step, grown, dropped, -1.0 if drop_fraction is None else float(drop_fraction)])
        self.last_update = {
            "step": self.step,
            "drop_fraction": drop_fraction,
            "grown": grown,
            "dropped": dropped,
            "layers": per_layer,
        }
        if self.options.check_every_update:
            self.check()
        release_free_heap()  # the update's mask-sized temporaries would stay resident in the C heap
        return self.last_update

    # -- invariants and devices ---------------------------------------------------------------------
    def check(self) -> None:
        """Exact counts, zero pruned weights, and (under DDP) the same masks on every rank."""
        if self.masks is None:
            return
        self.masks.check()
        if distributed.world_size() > 1:
            mine = self.masks.fingerprint().cpu()
            for other_rank, theirs in enumerate(distributed.gather(mine)):
                differ = (theirs != mine).nonzero().flatten().tolist()
                if differ:
                    name = list(self.masks)[differ[0]]
                    raise MaskInvariantError(
                        f"layer {name!r}: masks differ between rank {distributed.rank()} and rank {other_rank}"
                    )

    def follow_weights(self) -> None:
        """After the model moved (e.g. to a GPU), move masks and rule state with it."""
        if self.masks is not None:
            self.masks.follow_weights()
            self.rule.to(next(iter(self.masks.masks.values())).device)

    # -- logging ------------------------------------------------------------------------------------
    def metrics(self, per_layer: bool = False) -> dict[str, float]:
        """Flat metrics for loggers (``sparsity/...``, ``flops/...``)."""
        out: dict[str, float] = {"sparsity/density": self.global_density(), "sparsity/step": float(self.step)}
        if self.masks is not None:
            out["sparsity/itop"] = self.masks.itop()
            out["sparsity/updates"] = float(self.updates_done)
            out["sparsity/grown_total"] = float(self.grown_total)
            if self.rule.changes_topology and self.rule.trigger == "step" and self.horizon:
                out["sparsity/drop_fraction"] = self.drop_fraction_at(self.step)
            if self.gradient_policy is not None and self.gradient_policy.kept:
                out["sparsity/grad_density"] = self.gradient_policy.mean_gradient_density(self.masks)
            if per_layer:
                for name, d in self.layer_densities().items():
                    out[f"sparsity/layer/{name}"] = d
        if self.flops is not None and self.flops.dense_total:
            out["flops/train_total"] = self.flops.train_total
            out["flops/train_relative_to_dense"] = self.flops.train_relative_to_dense
        return out

    def inference_relative_to_dense(self) -> float | None:
        if self.flops is None or (self.flops._example is None and self.flops.f_dense is None):
            return None
        self.flops.measure()
        return self.flops.forward_flops(self.layer_densities()) / self.flops.f_dense if self.flops.f_dense else None

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "options": self.options.as_dict(),
            "step": self.step,
            "schedule_start": self.schedule_start,
            "horizon": self.horizon,
            "updates_done": self.updates_done,
            "skipped_updates": self.skipped_updates,
            "grown_total": self.grown_total,
            "dropped_total": self.dropped_total,
            "history": [list(h) for h in self.history],
            "masks": self.masks.state_dict() if self.masks is not None else None,
            "rule": self.rule.state_dict() if self.rule is not None else {},
            "flops": self.flops.state_dict() if self.flops is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved_rule = state.get("options", {}).get("update_rule")
        if saved_rule is not None and saved_rule != self.options.update_rule:
            raise ValueError(
                f"the checkpoint was trained with sparsity.update_rule={saved_rule}, this run uses "
                f"{self.options.update_rule}"
            )
        self.step = int(state["step"])
        self.schedule_start = int(state["schedule_start"])
        self.horizon = state["horizon"] if state["horizon"] is None else int(state["horizon"])
        self.updates_done = int(state["updates_done"])
        self.skipped_updates = int(state.get("skipped_updates", 0))
        self.grown_total = int(state.get("grown_total", 0))
        self.dropped_total = int(state.get("dropped_total", 0))
        self.history = [list(h) for h in state.get("history", [])]
        if self.masks is not None and state.get("masks") is not None:
            self.masks.load_state_dict(state["masks"])
            self.rule.load_state_dict(state.get("rule", {}))
            self.follow_weights()
            self.masks.apply_()
        if self.flops is not None and state.get("flops") is not None:
            self.flops.load_state_dict(state["flops"])

    def close(self) -> None:
        """Remove the FLOPs hook from the model."""
        if self.flops is not None:
            self.flops.close()
