"""Lightning glue for the sparsity engine: thin hooks around ``Sparsifier``.

Hook placement (Lightning 2.x automatic optimisation):

- ``setup``: build the masks from the model (fresh runs) - a resumed run then gets the saved
  masks through ``load_state_dict``, which Lightning calls after ``setup``;
- ``on_fit_start``: masks follow the model to its device; pruned weights are zeroed; the
  per-layer density plot is written;
- ``on_before_optimizer_step`` (after AMP unscaling, before clipping): capture the dense
  gradient on update steps, then mask the gradients;
- ``on_train_batch_end`` of a batch that stepped: re-apply the masks, count FLOPs, run the
  topology update on schedule (before the next forward).

The optimizer passed to ``on_before_optimizer_step`` is the live one, so the optimizer that the
task loop re-creates at every task boundary is always the one whose state gets reset.
``sparsity=dense`` uses this callback too, without masks, so every run reports FLOPs.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import typing
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from sparseforge.config.structured import schema_of, store_schema
from sparseforge.errors import ConfigError
from sparseforge.sparsity.options import SparsityOptions, rule_class
from sparseforge.sparsity.rules import RULES
from sparseforge.sparsity.sparsifier import Sparsifier
from sparseforge.sparsity.targets import prunable_layers

log = logging.getLogger("sparseforge")


class SparsityCallback(pl.Callback):
    """The ``sparsity`` config group: its node is handed to the engine whole.

    ``plot`` and ``log_layers`` are the callback's own (reporting); every other key is a setting
    of the engine or of the chosen update rule (``SparsityOptions.from_values``).
    """

    def __init__(self, plot: bool = True, log_layers: bool = True, **options: Any):
        self.options = SparsityOptions.from_values(options)
        self.plot = plot
        self.log_layers = log_layers
        self.sparsifier: Sparsifier | None = None
        self.plot_path: Path | None = None
        self._saved_state: dict[str, Any] | None = None
        self._stepped = False

    # -- pre-flight: the model-dependent checks, run by train.build() before anything trains ---------
    def preflight(self, method: pl.LightningModule) -> None:
        o = self.options
        check_sparsity_contract(
            method, sparse=not o.is_dense, changes_topology=rule_class(o.update_rule).changes_topology
        )
        if o.is_dense:
            return
        o.layer_nnz(o.sparse_layers(method.model))

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return self.sparsifier.state_dict() if self.sparsifier is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self.sparsifier is None:
            self._saved_state = state
        else:
            self.sparsifier.load_state_dict(state)

    # -- hooks ---------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.sparsifier is not None:
            return
        self.sparsifier = Sparsifier(pl_module.model, options=self.options)
        scaler = getattr(trainer.precision_plugin, "scaler", None)  # 16-mixed: unscale the dense gradient too
        if self.sparsifier.execution is not None and scaler is not None:
            self.sparsifier.execution.loss_scale = lambda: scaler.get_scale() if scaler.is_enabled() else None
        if self._saved_state is not None:
            self.sparsifier.load_state_dict(self._saved_state)
            self._saved_state = None
        # The method's side of the contract (methods/base.py): it gets the engine, never the glue.
        if hasattr(pl_module, "attach_sparsifier"):
            pl_module.attach_sparsifier(self.sparsifier)
            self.sparsifier.gradient_policy = pl_module.gradient_policy()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sp = self.sparsifier
        sp.follow_weights()
        if sp.masks is not None:
            sp.masks.apply_()
            sp.check()
        if sp.execution is not None:  # CPU-only kernels on a GPU, or an optimizer they cannot serve
            sp.execution.check_device()
            for optimizer in trainer.optimizers:
                sp.execution.attach_optimizer(optimizer)
        # A resumed run reported its layers when it started; logging them again here (before the
        # loops are restored, so at step 0) would add a row to the CSV log at the resume point.
        if trainer.is_global_zero and trainer.ckpt_path is None:
            self._report_layers(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sp = self.sparsifier
        if sp.rule is None or not sp.rule.changes_topology:
            return
        if sp.rule.trigger == "epoch":  # tdm: at the epoch's start, after the task loop's begin_task
            self._epoch_update(trainer)
            return
        steps_per_epoch = math.ceil(trainer.num_training_batches / max(trainer.accumulate_grad_batches, 1))
        dm = trainer.datamodule
        if self.options.schedule_scope == "task" and hasattr(dm, "epoch_in_task"):
            if dm.epoch_in_task(trainer.current_epoch) == 0:
                sp.restart_schedule(steps_per_epoch * dm.scenario.epochs_per_task)
        elif sp.horizon is None:  # a fresh run (a resumed one keeps its saved schedule)
            total = trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise ConfigError(
                    "trainer.max_epochs", "a sparsity schedule needs a finite run", "max_epochs or max_steps"
                )
            sp.set_total_steps(int(total))

    def _epoch_update(self, trainer: pl.Trainer) -> None:
        dm = trainer.datamodule
        epoch = trainer.current_epoch
        epoch_in_task = dm.epoch_in_task(epoch) if hasattr(dm, "epoch_in_task") else epoch
        # The live optimizer: the task loop re-creates it at a task's first epoch, just before.
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        stats = self.sparsifier.epoch_update(epoch_in_task, optimizer)
        if stats is not None and trainer.is_global_zero:
            values = {
                "sparsity/grown": float(stats["grown"]),
                "sparsity/dropped": float(stats["dropped"]),
                **self.sparsifier.metrics(per_layer=False),
            }
            self._log(trainer, values)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        self.sparsifier.before_optimizer_step(optimizer)
        self._stepped = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        if not self._stepped:  # gradient accumulation: no optimizer step after this batch
            return
        self._stepped = False
        stats = self.sparsifier.after_optimizer_step()
        if stats is not None and trainer.is_global_zero:
            values = {
                "sparsity/drop_fraction": stats["drop_fraction"],
                "sparsity/grown": float(stats["grown"]),
                "sparsity/dropped": float(stats["dropped"]),
                **self.sparsifier.metrics(per_layer=False),
            }
            if self.log_layers:
                for name, counts in stats["layers"].items():
                    values[f"sparsity/grown/{name}"] = float(counts["grown"])
            self._log(trainer, values)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self._log(trainer, self.sparsifier.metrics(per_layer=self.log_layers))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.sparsifier.check()

    # -- reporting -----------------------------------------------------------------------------------
    @staticmethod
    def _log(trainer: pl.Trainer, values: dict[str, float]) -> None:
        values = {k: v for k, v in values.items() if v is not None}
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)

    def _report_layers(self, trainer: pl.Trainer) -> None:
        sp = self.sparsifier
        if sp.masks is None:
            return
        densities = sp.layer_densities()
        log.info(
            "sparsity: %s/%s, density %.4g over %d layers",
            self.options.update_rule,
            self.options.distribution,
            sp.global_density(),
            len(densities),
        )
        self._log(trainer, sp.metrics(per_layer=self.log_layers))
        if not self.plot:
            return
        from sparseforge.sparsity.plots import plot_layer_densities

        title = f"{self.options.distribution} at density {self.options.density} ({self.options.update_rule})"
        self.plot_path = plot_layer_densities(
            densities, Path(trainer.default_root_dir) / "layer_density.png", title, sp.global_density()
        )
        nnz = sp.layer_nnz()
        rows = [[name, sp.masks.numel(name), nnz[name], d] for name, d in densities.items()]
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                logger.log_image(key="sparsity/layer_density", images=[str(self.plot_path)])
                logger.log_table(key="sparsity/layers", columns=["layer", "weights", "nonzeros", "density"], data=rows)

    def summary_section(self, trainer: pl.Trainer) -> dict[str, Any]:
        sp = self.sparsifier
        if sp is None:
            return {}
        o = self.options
        sparsity: dict[str, Any] = {
            "density": sp.global_density(),
            "target_density": o.density,
            "model_density": sp.model_density(),
            "update_rule": o.update_rule,
            "layers": sp.layer_densities(),
        }
        if sp.masks is not None:
            sparsity.update(
                distribution=o.distribution,
                layer_nnz=sp.layer_nnz(),
                dense_layers=[n for n in prunable_layers(sp.model) if n not in sp.masks.masks],
                itop=sp.masks.itop(),
                updates=sp.updates_done,
                skipped_updates=sp.skipped_updates,
                grown_total=sp.grown_total,
                steps=sp.step,
                backend=o.backend,
                mask_cache_bytes=sp.masks.factor_cache_bytes(),
            )
            if sp.execution is not None:
                sparsity["execution"] = sp.execution.summary()
            if sp.rule.trigger == "epoch":
                sparsity.update(tdm=dataclasses.asdict(sp.rule.schedule), regrow_dropped=o.rule.regrow_dropped)
            elif sp.rule.changes_topology:
                sparsity.update(
                    delta_t=o.delta_t,
                    drop_fraction=o.drop_fraction,
                    drop_schedule=o.drop_schedule,
                    end_fraction=o.end_fraction,
                    schedule_steps=sp.horizon,
                )
        section: dict[str, Any] = {"sparsity": sparsity}
        flops = sp.flops
        if flops is not None and flops.dense_total:
            world = trainer.world_size  # every rank trains its own share of the samples
            section["flops"] = {
                "train_total": flops.train_total * world,
                "train_dense_total": flops.dense_total * world,
                "train_relative_to_dense": flops.train_relative_to_dense,
                "inference_forward": flops.forward_flops(sp.layer_densities()),
                "dense_forward": flops.f_dense,
                "inference_relative_to_dense": sp.inference_relative_to_dense(),
                "samples_trained": flops.samples_trained * world,
                "samples_forward_only": flops.samples_forward_only * world,
                # examples a dense run of the same method would process but this run skipped on
                # purpose (SparCL's removed data): in the dense reference only
                "samples_reference_only": flops.samples_reference_only * world,
            }
        return section


def find_sparsifier(trainer: pl.Trainer) -> Sparsifier | None:
    """The run's ``Sparsifier``, or None (for tests and tools; methods get it through
    ``attach_sparsifier``)."""
    for callback in trainer.callbacks:
        if isinstance(callback, SparsityCallback):
            return callback.sparsifier
    return None


def check_sparsity_contract(method: pl.LightningModule, sparse: bool, changes_topology: bool = True) -> None:
    """One config error when the method and the ``sparsity`` group cannot run together."""
    needs = getattr(method, "sparsity_masks", "any")
    name = getattr(method, "name", type(method).__name__)
    if needs == "fixed" and sparse and changes_topology:
        raise ConfigError(
            "sparsity",
            f"method={name} takes no gradient step on the stream, so masks that change during training "
            "would never be updated; it needs masks that stay fixed",
            "sparsity=dense or sparsity=static",
        )
    if needs == "own" and sparse:
        raise ConfigError(
            "sparsity", f"method={name} keeps masks of its own; a sparsity rule cannot run beside it", "sparsity=dense"
        )
    if needs == "engine" and not sparse:
        raise ConfigError(
            "sparsity",
            f"method={name} builds on the sparsity engine's masks, but this sparsity group has none",
            "a sparse group, e.g. sparsity=sparcl",
        )


def register_sparsity_schemas() -> None:
    """``schema/sparsity/<rule>`` for ``dense`` and every registered rule: the engine's settings,
    the rule's own and the callback's reporting switches, so ``configs/sparsity/<rule>.yaml``
    holds only what differs from the defaults and a key of another rule is refused while
    composing."""
    hints = typing.get_type_hints(SparsityCallback.__init__)
    reporting = {
        name: (hints.get(name, Any), param.default)
        for name, param in inspect.signature(SparsityCallback.__init__).parameters.items()
        if param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and name != "self"
    }
    target = f"{SparsityCallback.__module__}.{SparsityCallback.__qualname__}"
    for name in ["dense", *RULES.names()]:
        rule_options = rule_class(name).Options
        defaults = {"update_rule": name, "seed": "${seed}"} | ({"density": 1.0} if name == "dense" else {})
        schema = schema_of(
            (SparsityOptions, rule_options),
            target=target,
            extra=reporting,
            defaults=defaults,
            name=f"{name}SparsityConfig",
            exclude=("rule",),
        )
        store_schema("sparsity", name, schema)
