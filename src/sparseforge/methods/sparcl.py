"""SparCL (Wang, Zhan et al., NeurIPS 2022): sparse continual learning on DER++ (default) or ER.

Three separable components, each switchable off for ablations:

- TDM, task-aware dynamic masking: the sparsity rule ``tdm`` (``sparseforge.sparsity.rules.tdm``,
  configs/sparsity/sparcl.yaml). ``sparsity.update_rule=static`` turns it off (the magnitude-
  pruned initial mask then stays fixed);
- DDR, dynamic data removal: ``sparseforge.continual.data_removal`` (``method.ddr.enabled``),
  wired in through ``training_indices`` and the per-example outcomes of each training batch;
- DGM, dynamic gradient masking: ``sparseforge.sparsity.gradient_masking`` (``method.dgm.enabled``),
  attached to the run's ``Sparsifier`` as its gradient policy.

This module adds the release's loss options and the FLOPs bookkeeping, nothing else:

- ``restrict_current_ce`` (release: on): the current batch's cross-entropy sees only the current
  task's classes (other logits at -inf). This is not vanilla DER++: it removes the pull of new
  data against old classes' logits, which usually raises class-IL accuracy. Replay terms and
  stored logits are unaffected;
- ``replay_first_task`` (release: off): the release replays only from the second task on;
  DER++/ER here (Mammoth) replay as soon as the buffer holds anything.

Training FLOPs are counted by the sparsity engine's accountant on every example actually
forwarded (current batch and replay draws), at the layer densities of the moment, with the
weight-gradient part at DGM's gradient density. The dense reference is the counterfactual dense
run of the same base method (DER++ or ER as implemented here) with the same epochs and buffer:
every example of every epoch and that run's replay. What SparCL skips on purpose (examples removed
by DDR, the replay a dense run would do on the skipped steps and during the first task) is
charged to the reference only (``FlopsAccountant.charge_reference_only``), so
``flops.train_relative_to_dense`` is relative to that dense run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

import torch

from sparseforge.continual.data_removal import DataRemoval
from sparseforge.errors import ConfigError
from sparseforge.methods.base import METHODS
from sparseforge.methods.derpp import DERPP
from sparseforge.methods.er import ER
from sparseforge.options import build_options
from sparseforge.sparsity.gradient_masking import DynamicGradientMasking
from sparseforge.utils.distributed import gather_cat, world_size

log = logging.getLogger("sparseforge")


class DGMRelativeTo(str, Enum):
    layer = "layer"  # gradient_sparsity is a fraction of the layer's entries (the release)
    active = "active"  # ... of the layer's active weights


@dataclass
class DDROptions:
    """Dynamic data removal (``sparseforge.continual.data_removal``), the release's values."""

    enabled: bool = True
    #: Epochs within each task at which the least-forgotten examples are removed, in equal steps.
    removal_epochs: list[int] = field(default_factory=lambda: [5, 10, 15, 20])
    #: Of the task's training examples, in total (3000 of 10000 per CIFAR-10 task).
    remove_fraction: float = 0.3


@dataclass
class DGMOptions:
    """Dynamic gradient masking (``sparseforge.sparsity.gradient_masking``), the release's values."""

    enabled: bool = True
    #: Keep the top (1 - gradient_sparsity) of the layer's entries (or of its active weights,
    #: ``relative_to: active``) by |g| among active weights.
    gradient_sparsity: float = 0.8
    relative_to: DGMRelativeTo = DGMRelativeTo.layer
    #: Optimizer steps between refreshes of the gradient mask; the counter restarts every epoch.
    refresh_every: int = 30


@dataclass
class SparCLOptions:
    """What SparCL adds to its base method's options."""

    #: The current batch's cross-entropy over the current task's classes only (--use_cl_mask).
    restrict_current_ce: bool = True
    #: The release replays only from the second task on; DER++/ER (Mammoth) replay in task 0 too.
    replay_first_task: bool = False
    #: Keep every BatchNorm bias at 0 for the whole run, as the release does: its mask generator
    #: (prune_utils/retrain.py: SparseTraining.generate_mask) masks every parameter with >= 10%
    #: zeros, and BN biases start at exactly 0, so its published numbers come from a network with
    #: no BN shift. Off (the paper): BN biases train.
    freeze_bn_bias: bool = False
    ddr: DDROptions = field(default_factory=DDROptions)
    dgm: DGMOptions = field(default_factory=DGMOptions)


class SparCLMixin:
    """SparCL on top of a replay method (DER++ or ER); see the module docstring."""

    name = "sparcl"  # both bases answer to method=sparcl (the factory ``SparCL`` below)

    #: Buffer draws per training step of the base method (for the dense reference).
    replay_draws_per_step: ClassVar[int] = 1
    sparsity_masks = "engine"  # TDM and DGM act on the sparsity engine's masks
    needs_task_boundaries = True  # TDM, DDR and the restricted CE work task by task
    supports_soft_targets = False  # DDR reads per-example outcomes against hard labels

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        o = self.options
        self.current_ce_classes = "task" if o.restrict_current_ce else "all"
        if o.freeze_bn_bias:
            freeze_bn_biases_at_zero(self.model)
        self.data_removal = (
            DataRemoval(o.ddr.removal_epochs, o.ddr.remove_fraction, seed=o.seed) if o.ddr.enabled else None
        )
        self.gradient_masking = (
            DynamicGradientMasking(o.dgm.gradient_sparsity, o.dgm.refresh_every, o.dgm.relative_to.value)
            if o.dgm.enabled
            else None
        )
        self.density_history: list[dict[str, Any]] = []  # per epoch: task, epoch, sparse-layer density
        # Examples only the dense reference run processes: DDR's removed data (with the replay of
        # the steps it would take) and replay skipped on the steps run (the first task).
        self.reference_only = {"removed_data": 0, "replay": 0}
        self._batch = None
        self._step: dict[str, int] = {}
        self._epoch: dict[str, Any] = {}

    # -- wiring --------------------------------------------------------------------------------------
    def check_setup(self, datamodule) -> None:
        super().check_setup(datamodule)
        if self.data_removal is not None:
            late = [e for e in self.data_removal.removal_epochs if e >= datamodule.scenario.epochs_per_task]
            if late:
                log.info(
                    "SparCL: data removal at epochs %s never happens with scenario.epochs_per_task=%d",
                    late,
                    datamodule.scenario.epochs_per_task,
                )

    def gradient_policy(self):
        return self.gradient_masking

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.gradient_masking is not None and (self.sparsifier is None or self.sparsifier.masks is None):
            raise ConfigError(
                "method.dgm.enabled", "gradient masking needs sparse layers, but the run has none", "sparsity=sparcl"
            )

    def training_indices(self, task, tasks):
        index = super().training_indices(task, tasks)
        if self.data_removal is None:
            return index
        epoch_in_task = self.trainer.datamodule.epoch_in_task(self.trainer.current_epoch)
        n_examples = self.trainer.datamodule.n_training_ids
        return self.data_removal.indices(task.id, index, epoch_in_task, n_examples)

    def replay(self):
        if self.current_task == 0 and not self.options.replay_first_task:
            return None
        replayed = super().replay()
        if replayed is not None:
            self._step["replayed"] = self._step.get("replayed", 0) + len(replayed.y)
        return replayed

    def observe(self, batch):
        self._batch = batch
        self._step = {"current": len(batch.y), "buffer": len(self.buffer), "replayed": 0}
        return super().observe(batch)

    def track_accuracy(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        # Every base calls this with the current batch's (unrestricted) logits: DDR's statistic.
        super().track_accuracy(logits, y)
        if self.data_removal is not None and self._batch is not None:
            index, correct = self._batch.index, logits.detach().argmax(dim=1) == y
            if world_size() > 1:  # every rank keeps the statistics of every example
                index, correct = gather_cat(index), gather_cat(correct.to(torch.uint8)).bool()
            self.data_removal.record(index, correct)

    # -- per epoch and per step ------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        dm = self.trainer.datamodule
        epoch, task = self.trainer.current_epoch, dm.tasks[dm.task_of_epoch(self.trainer.current_epoch)]
        if self.gradient_masking is not None:
            self.gradient_masking.start_epoch()
        full = len(super().training_indices(task, dm.tasks))
        self._epoch = {"reference_batches": self._reference_batches(full), "steps": 0, "current": 0}
        record = {"task": task.id, "epoch_in_task": dm.epoch_in_task(epoch), "train_examples": None}
        if self.data_removal is not None:
            record["train_examples"] = self.task_size_now(task)
        if self.sparsifier is not None and self.sparsifier.masks is not None:
            record["density"] = self.sparsifier.global_density()
            record["layer_nnz"] = dict(self.sparsifier.layer_nnz())
        self.density_history.append(record)
        if self.trainer.is_global_zero:
            values = {"sparcl/train_examples": float(record["train_examples"] or full)}
            for logger in self.trainer.loggers:
                logger.log_metrics(values, step=self.trainer.global_step)

    def task_size_now(self, task) -> int:
        return len(self.data_removal.remaining(task.train_index))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self._charge_reference_only(batch_idx)
        return loss

    def _charge_reference_only(self, batch_idx: int) -> None:
        # Here and not in on_train_batch_end: Lightning runs the module's on_train_batch_end after
        # the callbacks', so after a checkpoint saved inside the epoch, which would then miss it.
        flops = self.sparsifier.flops if self.sparsifier is not None else None
        if flops is None or not self._step:
            return
        # Replay a dense run of the base method would have done at this step but this run skipped.
        replay = max(0, self._reference_replay(self._step["buffer"]) - self._step["replayed"])
        removed = 0
        self._epoch["steps"] += 1
        self._epoch["current"] += self._step["current"]
        self._step = {}
        if batch_idx == self.trainer.num_training_batches - 1:
            # The epoch's tail: DDR's removed examples and the replay of the steps they would take.
            reference = self._epoch["reference_batches"]
            removed = max(0, sum(reference) - self._epoch["current"])
            removed += max(0, len(reference) - self._epoch["steps"]) * self._reference_replay(len(self.buffer))
        flops.charge_reference_only(replay + removed)
        self.reference_only["replay"] += replay
        self.reference_only["removed_data"] += removed

    def _reference_replay(self, buffer_len: int) -> int:
        """Examples the base method replays in one step on this rank with ``buffer_len`` stored."""
        if buffer_len == 0:
            return 0
        world, rank = self.trainer.world_size, self.global_rank
        return self.replay_draws_per_step * len(
            range(rank, min(self.options.minibatch_size * world, buffer_len), world)
        )

    def _reference_batches(self, n_examples: int) -> list[int]:
        """Batch sizes of one epoch over ``n_examples`` on this rank, as the trainer would run it."""
        dm, trainer = self.trainer.datamodule, self.trainer
        world = trainer.world_size
        n = -(-n_examples // world) if world > 1 else n_examples  # DistributedSampler pads to equal shares
        full, rest = divmod(n, dm.batch_size)
        sizes = [dm.batch_size] * full
        if rest and not (dm.drop_last and n_examples > dm.batch_size):
            sizes.append(rest)
        limit = trainer.limit_train_batches
        if isinstance(limit, int):
            sizes = sizes[:limit]
        elif limit is not None and float(limit) != 1.0:
            sizes = sizes[: int(len(sizes) * float(limit))]
        return sizes

    # -- state and summary -----------------------------------------------------------------------------
    def method_state(self) -> dict[str, Any]:
        state = super().method_state()
        state["sparcl"] = {
            "data_removal": self.data_removal.state_dict() if self.data_removal is not None else None,
            "gradient_masking": self.gradient_masking.state_dict() if self.gradient_masking is not None else None,
            "density_history": [dict(r) for r in self.density_history],
            "reference_only": dict(self.reference_only),
            "epoch": dict(self._epoch),  # this epoch's FLOPs bookkeeping, for a resume inside it
        }
        return state

    def load_method_state(self, state: dict[str, Any]) -> None:
        super().load_method_state(state)
        saved = state.get("sparcl")
        if saved is None:
            return
        if self.data_removal is not None and saved["data_removal"] is not None:
            self.data_removal.load_state_dict(saved["data_removal"])
        if self.gradient_masking is not None and saved["gradient_masking"] is not None:
            self.gradient_masking.load_state_dict(saved["gradient_masking"])
        self.density_history = [dict(r) for r in saved["density_history"]]
        self.reference_only = dict(saved["reference_only"])
        self._epoch = dict(saved.get("epoch", {}))

    def summary_section(self, trainer) -> dict[str, Any]:
        section = super().summary_section(trainer)
        sparcl: dict[str, Any] = {
            "base": self.base_name,
            "restrict_current_ce": self.options.restrict_current_ce,
            "replay_first_task": self.options.replay_first_task,
            "tdm": self.sparsifier is not None
            and self.sparsifier.rule is not None
            and self.sparsifier.rule.name == "tdm",
            "ddr": None,
            "dgm": None,
            "epochs": self.density_history,
            "reference_only_samples": {k: v * trainer.world_size for k, v in self.reference_only.items()},
        }
        if self.data_removal is not None:
            dr = self.data_removal
            sparcl["ddr"] = {
                "removal_epochs": dr.removal_epochs,
                "remove_fraction": dr.remove_fraction,
                "removed_total": sum(r["removed"] for r in dr.history),
                "events": dr.history,
            }
        if self.gradient_masking is not None:
            g = self.gradient_masking
            sparcl["dgm"] = {
                "gradient_sparsity": g.gradient_sparsity,
                "relative_to": g.relative_to,
                "refresh_every": g.refresh_every,
                "refreshes": g.refreshes,
                "gradient_density": g.mean_gradient_density(self.sparsifier.masks),
            }
        section["sparcl"] = sparcl
        flops = self.sparsifier.flops if self.sparsifier is not None else None
        if flops is not None and flops.dense_total:
            section["metrics"] = {"flops/train_relative_to_dense": flops.train_relative_to_dense}
        return section


class SparCLDERPP(SparCLMixin, DERPP):
    base_name = "derpp"
    replay_draws_per_step = 2  # the logit (MSE) draw and the label (CE) draw

    @dataclass
    class Options(SparCLOptions, DERPP.Options):
        alpha: float = 0.1  # the release's DER++ logit-MSE weight (Mammoth's tuned value: 0.2)


class SparCLER(SparCLMixin, ER):
    base_name = "er"

    @dataclass
    class Options(SparCLOptions, ER.Options):
        pass


class SparCLBase(str, Enum):
    derpp = "derpp"
    er = "er"


@dataclass
class SparCLConfigOptions(SparCLDERPP.Options):
    #: The base method: derpp (the release) | er (the release's ER path crashes; ours runs).
    base: SparCLBase = SparCLBase.derpp


@torch.no_grad()
def freeze_bn_biases_at_zero(model: torch.nn.Module) -> list[str]:
    """Zero every BatchNorm bias and take it out of training (the release's frozen BN shifts)."""
    frozen = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.bias is not None:
            module.bias.zero_()
            module.bias.requires_grad_(False)
            frozen.append(f"{name}.bias")
    return frozen


def SparCL(model, optimizer, lr_scheduler=None, optimizer_groups=None, **options):
    """``method=sparcl``: SparCL on DER++ (``base: derpp``) or ER (``base: er``)."""
    base = build_options(SparCLConfigOptions, options, "method").base
    options.pop("base", None)
    if base is SparCLBase.er:  # alpha and beta are DER++'s: ER has no logit or buffer-CE term
        options = {k: v for k, v in options.items() if k not in ("alpha", "beta")}
    cls = SparCLDERPP if base is SparCLBase.derpp else SparCLER
    return cls(model, optimizer, lr_scheduler, optimizer_groups=optimizer_groups, **options)


SparCL.Options = SparCLConfigOptions
SparCL.needs_task_boundaries = SparCLMixin.needs_task_boundaries
SparCL.config_wiring = SparCLDERPP.config_wiring
METHODS.register("sparcl")(SparCL)
