"""SHARP: sparse dynamic connectivity with hidden-activation replay (Lightning glue).

The algorithm lives beside this file (plain PyTorch); this module only maps
it onto the task loop:

- a task is an episode of ``max_phases`` phases of ``phase_epochs`` epochs; the first epoch of
  every phase selects units, rewires and gets a fresh optimizer;
- ``observe``: SupCon over the (non-augmented) stream batch plus replayed activations of the
  previous ``stm_num_tasks`` episodes' classes;
- frozen units: gradients zeroed in ``on_before_optimizer_step`` (before clipping) and the
  optimizer's update undone after its step, so freezing holds for any optimizer;
- ``end_task``: promote -> freeze -> STM insert -> re-init idle -> LTM update;
- ``predict_scores``: kNN votes over the LTM (the paper) or the linear head.

DDP: every rank computes selection, rewiring and memories with identically seeded generators,
then rank 0's SHARP state and re-initialised weights are broadcast, so they are identical by
construction.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from sparseforge.continual.scenarios import Task
from sparseforge.errors import ConfigError
from sparseforge.methods.base import METHODS, ContinualMethod
from sparseforge.methods.sharp.learner import LearnerOptions, SharpLearner, first_per_class
from sparseforge.models.sharp import SharpNet
from sparseforge.options import check
from sparseforge.sparsity.flops import LayerFlopsMeter
from sparseforge.utils.distributed import world_size

log = logging.getLogger("sparseforge")


class Predictor(str, Enum):
    knn = "knn"  # the paper's LTM kNN
    linear = "linear"  # the linear head (trained on detached features)


@METHODS.register("sharp")
class Sharp(ContinualMethod):
    sparsity_masks = "own"  # SHARP rewires masks of its own: the run's sparsity group must be dense
    needs_task_boundaries = True  # episodes: unit selection, freezing and memories per task

    @dataclass
    class Options(LearnerOptions, ContinualMethod.Options):
        #: Epochs per phase; a fresh optimizer every phase.
        phase_epochs: int = 3
        #: Phases per episode (fixed, no early stop); scenario.epochs_per_task = phase_epochs x max_phases.
        max_phases: int = 10
        #: Replayed samples per step; null: data.batch_size (as the authors).
        batch_size_memory: int | None = None
        predict_with: Predictor = Predictor.knn
        #: The paper trains without augmentation.
        augment: bool = False

        def __post_init__(self) -> None:
            super().__post_init__()
            for key in ("phase_epochs", "max_phases"):
                check(f"method.{key}", getattr(self, key) >= 1, f"must be >= 1, got {getattr(self, key)}")
            size = self.batch_size_memory
            check("method.batch_size_memory", size is None or size >= 2, f"must be null or >= 2, got {size}")

    def __init__(self, model: SharpNet, optimizer: partial, lr_scheduler: partial | None = None, **options: Any):
        super().__init__(model, optimizer, lr_scheduler, **options)
        if not isinstance(model, SharpNet):
            raise ConfigError(
                "model",
                f"SHARP needs a SHARP network, got {type(model).__name__}",
                "model=sharp_mnistlike, sharp_vgg_small",
            )
        o = self.options
        self.phase_epochs, self.max_phases = o.phase_epochs, o.max_phases
        self.batch_size_memory = o.batch_size_memory
        self.predict_with, self.augment = o.predict_with.value, o.augment
        learner_fields = {f.name for f in dataclasses.fields(LearnerOptions)}
        self.learner = SharpLearner(
            model, LearnerOptions(**{k: v for k, v in dataclasses.asdict(o).items() if k in learner_fields})
        )
        self.memory_record = {"bytes": 0, "samples": 0, "transient_bytes": 0, "ltm_bytes": 0}
        # Replayed activations enter above the cut-off, so FLOPs are counted per layer, for the
        # examples that really pass through it (the head trains on detached features).
        self.flops = LayerFlopsMeter({layer.name: layer.module for layer in self.learner.layers} | {"head": model.head})

    # -- set-up checks --------------------------------------------------------------------------------
    def check_setup(self, datamodule) -> None:
        """Pre-flight (run by ``train.build``): every replayed class needs 2 samples per step."""
        super().check_setup(datamodule)
        if datamodule.scenario.views_per_task and not self.learner.activation_replay:
            raise ConfigError(
                "method.replay_layer",
                "raw-image replay keeps images without their task, so it cannot replay a domain-incremental "
                "stream's per-task views",
                "conv_early",
            )
        m = self.learner.stm_num_tasks
        tasks = datamodule.tasks
        replayed = max(
            (len(set().union(*[t.classes for t in tasks[max(0, e - m) : e]])) for e in range(1, len(tasks))),
            default=0,
        )
        size = self.batch_size_memory or datamodule.batch_size
        check(
            "method.batch_size_memory",
            size >= 2 * replayed,
            f"{size} replayed samples per step cannot give each of the {replayed} replayed classes the 2 samples SupCon needs",
            f">= {2 * replayed}",
        )

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        self.learner.preprocess_raw = dm.preprocess_eval
        per_task = dm.scenario.epochs_per_task
        if per_task != self.phase_epochs * self.max_phases:
            log.warning(
                "SHARP: scenario.epochs_per_task=%d differs from phase_epochs x max_phases = %d x %d",
                per_task,
                self.phase_epochs,
                self.max_phases,
            )

    # -- phases ---------------------------------------------------------------------------------------
    def phase_of_epoch(self, epoch: int) -> tuple[int, int, bool]:
        """(task, 1-based phase, whether this epoch starts the phase)."""
        dm = self.trainer.datamodule
        k = dm.epoch_in_task(epoch)
        phase = min(k // self.phase_epochs + 1, self.max_phases)
        starts = k % self.phase_epochs == 0 and k // self.phase_epochs < self.max_phases
        return dm.task_of_epoch(epoch), phase, starts

    def on_train_start(self) -> None:
        super().on_train_start()
        self.flops.densities = self.learner.densities()  # also right for a resume inside an epoch

    def on_train_epoch_start(self) -> None:
        self.flops.densities = self.learner.densities()  # masks change only at a phase start
        task_id, phase, starts = self.phase_of_epoch(self.current_epoch)
        done = self.learner.position
        if not starts or (done["episode"], done["phase"]) == (task_id, phase):
            return
        dm = self.trainer.datamodule
        index = self.learner.episode_samples(task_id, dm.tasks[task_id].train_index)[: self.learner.selection_samples]
        images, tasks = dm.locate(index)
        inputs = dm.preprocess_eval(dm.train_data.raw(images).to(self.device), tasks.to(self.device))
        entry = self.learner.start_phase(task_id, phase, inputs)
        self._sync_ranks()
        self.trainer.strategy.setup_optimizers(self.trainer)
        self.flops.densities = self.learner.densities()
        self.log("sharp/activation_percent", entry["percent"], rank_zero_only=True)
        for layer, counts in self.learner.unit_counts().items():
            for kind, n in counts.items():
                self.log(f"sharp/{kind}/{layer}", float(n), rank_zero_only=True)

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.learner.begin_episode(task.id, self.device)

    # -- training -------------------------------------------------------------------------------------
    def observe(self, batch) -> torch.Tensor:
        if self.learner.bank_episode != self.current_task:  # resumed inside a task
            self.learner.begin_episode(self.current_task, self.device)
        x = batch.x if self.augment else self.datamodule.preprocess_eval(batch.raw, batch.task)
        replay_size = self.batch_size_memory or self.datamodule.batch_size
        loss, parts = self.learner.loss(x, batch.y, replay_size, generator=None)
        self.log_step_metrics({f"train/{k}": v for k, v in parts.items()})
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        # after backward and AMP unscaling, before clipping
        self.learner.before_optimizer_step()

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.learner.after_optimizer_step()

    # -- end of episode -------------------------------------------------------------------------------
    def end_task(self, task: Task) -> None:
        dm = self.trainer.datamodule
        n = max(self.learner.stm.per_class, self.learner.ltm_per_class)
        order = self.learner.episode_samples(task.id, task.train_index)
        images, _ = dm.locate(order)  # a task's ids are distinct images, all of this task
        positions = first_per_class(dm.train_data.y, images, task.classes, n)
        raw = {c: dm.train_data.raw(i).to(self.device) for c, i in positions.items() if len(i)}
        inputs = {c: dm.preprocess_eval(r, task.id) for c, r in raw.items()}
        self.learner.end_episode(task.id, inputs, raw)
        self._sync_state()
        self._record_memory()

    def _record_memory(self) -> None:
        record, learner = self.memory_record, self.learner
        record["transient_bytes"] = max(record["transient_bytes"], learner.last_transient_bytes)
        if learner.stm.nbytes >= record["bytes"]:
            record["bytes"], record["samples"] = learner.stm.nbytes, learner.stm.samples
        record["ltm_bytes"] = max(record["ltm_bytes"], learner.ltm.nbytes)

    # -- DDP: rank 0's SHARP state everywhere ------------------------------------------------------------
    def _sync_ranks(self) -> None:
        if world_size() > 1:
            state = self.trainer.strategy.broadcast(
                {"ranks": self.learner.ranks, "masks": self.learner.masks.state_dict()}, src=0
            )
            self.learner.load_partial_state(state)

    def _sync_state(self) -> None:
        if world_size() == 1:
            return
        self.learner.load_state_dict(self.trainer.strategy.broadcast(self.learner.state_dict(), src=0))
        for layer in self.learner.layers:
            for p in layer.module.parameters():
                dist.broadcast(p.data, src=0)

    # -- prediction -----------------------------------------------------------------------------------
    def predict_scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.learner.scores(x, self.model.head.out_features, self.predict_with)

    # -- state ----------------------------------------------------------------------------------------
    def method_state(self) -> dict[str, Any]:
        return {
            "sharp": self.learner.state_dict(),
            "memory_record": dict(self.memory_record),
            "flops": self.flops.state_dict(),
        }

    def load_method_state(self, state: dict[str, Any]) -> None:
        if "sharp" in state:
            self.learner.load_state_dict(state["sharp"])
            self.memory_record = dict(state["memory_record"])
            if "flops" in state:  # checkpoints from before FLOPs were counted
                self.flops.load_state_dict(state["flops"])

    def summary_section(self, trainer) -> dict[str, Any]:
        dm = trainer.datamodule
        image_bytes = int(torch.tensor(dm.train_data.raw_shape).prod())
        record = self.memory_record
        learner = self.learner
        per_sample = int(torch.tensor(self.model.cutoff_shape).prod()) if learner.activation_replay else image_bytes
        replay = {
            "method": "sharp",
            "replay_layer": learner.replay_layer,
            "bytes": record["bytes"],
            "samples": record["samples"],
            "bytes_per_sample": per_sample,
            "transient_bytes": record["transient_bytes"],
            "ltm_bytes": record["ltm_bytes"],
            "total_bytes": record["bytes"] + record["ltm_bytes"],
            "raw_image_bytes": image_bytes,
            "er_equivalent_samples": record["bytes"] // image_bytes,
            "er_equivalent_samples_with_ltm": (record["bytes"] + record["ltm_bytes"]) // image_bytes,
            "replayed_per_episode": {str(e): {str(c): n for c, n in d.items()} for e, d in learner.replayed.items()},
        }
        masks = learner.masks
        nnz = masks.nnz_per_layer()
        sparsity = {
            "method": "sharp",
            "density": masks.global_density(),
            "itop": masks.itop(),
            "layers": {
                k: {
                    "nonzero": n,
                    "target_nonzero": learner.initial_nnz[k],
                    "total": masks.numel(k),
                    "density": n / masks.numel(k),
                }
                for k, n in nnz.items()
            },
        }
        grown = {"idle": 0, "training": 0}
        for entry in learner.rewire_log:
            for counts in entry["layers"].values():
                grown["training"] += counts["grown_into_training"]
                grown["idle"] += counts["grown"] - counts["grown_into_training"]
        world = trainer.world_size  # every rank counts its own share of the examples
        self.flops.densities = learner.densities()  # also after a resume that had nothing left to train
        flops = {
            "convention": "per layer, for the examples that pass through it (see LayerFlopsMeter)",
            "train_total": self.flops.train_total * world,
            "train_dense_total": self.flops.dense_total * world,
            "train_relative_to_dense": self.flops.train_relative_to_dense,
            # the representation the kNN classifier reads (the head is not used by kNN)
            "inference_relative_to_dense": self.flops.inference_relative_to_dense(
                [layer.name for layer in learner.layers]
            ),
        }
        return {
            "replay": replay,
            "sparsity": sparsity,
            "flops": flops,
            "sharp": {
                "predict_with": self.predict_with,
                "units": learner.unit_counts(),
                "position": learner.position,
                "phases": len(learner.rewire_log),
                "regrown_connections": grown,  # into idle units (the paper) / the fallback into training units
                "shortfall": {k: learner.initial_nnz[k] - n for k, n in nnz.items() if n != learner.initial_nnz[k]},
            },
        }
