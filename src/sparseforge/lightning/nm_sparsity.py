"""Lightning glue for N:M sparsity (``sparsity=nm``): install, drive the clock, report, export.

- ``setup``: puts the N:M parametrizations on the method's model (before the optimizer exists,
  and before a checkpoint is restored, so resumed state dicts match).
- ``on_train_start``: fixes the schedule length (``trainer.estimated_stepping_batches`` optimizer
  steps, or ``max_epochs`` with ``clock=epoch``) unless the restored buffers already hold one.
- ``on_train_batch_start``: writes ``(global_step or epoch, total)`` into every layer's buffers
  (the single source of truth: the layers compute alpha and N:M from it) and counts the
  training FLOPs of the examples processed; ``on_train_batch_end`` logs alpha / pattern / FLOPs.
- ``summary_section``: "sparsity" (density, layers, final pattern) and "flops" for summary.json.
- ``on_train_end``: writes ``nm_export.pt`` (hard-masked weights + masks) and reports which layers
  can become real 2:4 tensors (and, on a capable GPU, converts a copy to check it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from sparseforge.errors import ConfigError
from sparseforge.lightning.sparsity_callback import check_sparsity_contract
from sparseforge.sparsity.flops import FlopsAccountant
from sparseforge.sparsity.nm.export import (
    default_backend,
    export_state,
    ineligible_reason,
    semi_structured_unsupported_reason,
)
from sparseforge.sparsity.nm.flops import forward_density, hardware_2to4_density, step_densities
from sparseforge.sparsity.nm.schedule import NMSchedule
from sparseforge.sparsity.nm.sparsifier import NMSparsifier, dense_weight
from sparseforge.sparsity.targets import prunable_layers
from sparseforge.utils.io import replacing
from sparseforge.utils.logging import logger_writes_at_this_batch

log = logging.getLogger("sparseforge")

FLOPS_CONVENTION = (
    "ours (sparseforge), not the PGF paper's: FLOPs = 2 x MACs per example; sparse layers forward and data-gradient "
    "x N/M while the mask is binary (dense during warm-up and while MdGf alpha > 0), weight-gradient dense; "
    "other ops 3 x forward"
)
GROUPING = {
    "row": "input dimension innermost: Linear along in_features; Conv along input channels at fixed (k,r,s)",
    "col": "output dimension innermost: Linear along out_features; Conv along output channels at fixed (c,r,s)",
}
_SECTION_KEYS = {
    "srste": {"lambda_w": "srste_lambda"},
    "mdgf": {
        "decay": "decay",
        "end_fraction": "decay_end_fraction",
        "rate": "decay_rate",
        "coef_per_step": "decay_coef_per_step",
        "levels": "decay_levels",
        "backward": "decay_backward",
    },
    "sdgf": {"structure": "structure", "finetune_fraction": "finetune_fraction"},
}


def _plain(value: Any) -> Any:
    """Hydra hands enums and DictConfigs; the engine takes strings and dicts."""
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


def build_schedule(n: int, m: int, mode: str, dense_fraction: float, sections: dict[str, Any]) -> NMSchedule:
    """NMSchedule from the config's flat keys plus its ``srste``/``mdgf``/``sdgf`` sections."""
    kwargs: dict[str, Any] = {"n": n, "m": m, "mode": mode, "dense_fraction": dense_fraction}
    for section, mapping in _SECTION_KEYS.items():
        options = dict(sections.get(section) or {})
        unknown = sorted(set(options) - set(mapping))
        if unknown:
            raise ConfigError(f"sparsity.{section}.{unknown[0]}", "unknown option", ", ".join(mapping))
        kwargs.update({mapping[k]: v for k, v in options.items()})
    try:
        return NMSchedule(**kwargs)
    except ValueError as exc:
        key, _, problem = str(exc).partition(": ")
        raise ConfigError(f"sparsity.{key}", problem) from None


class NMSparsityCallback(pl.Callback):
    def __init__(
        self,
        n: int = 2,
        m: int = 4,
        mode: str = "srste",
        sparse_dim: str = "row",
        include: Sequence[str] | None = ("blocks.*.mlp.fc1", "blocks.*.mlp.fc2"),
        exclude: Sequence[str] | None = None,
        dense_first_layer: bool = False,
        dense_last_layer: bool = False,
        indivisible: str = "error",
        clock: str = "step",
        dense_fraction: float = 0.0,
        srste: Mapping[str, Any] | None = None,
        mdgf: Mapping[str, Any] | None = None,
        sdgf: Mapping[str, Any] | None = None,
        export: bool = True,
    ):
        self.schedule = build_schedule(
            _plain(n),
            _plain(m),
            _plain(mode),
            _plain(dense_fraction),
            {"srste": _plain(srste), "mdgf": _plain(mdgf), "sdgf": _plain(sdgf)},
        )
        self.clock = _plain(clock)
        if self.clock not in ("step", "epoch"):
            raise ConfigError("sparsity.clock", f"unknown value {self.clock!r}", "step, epoch")
        self.include = _plain(include)
        self.exclude = _plain(exclude)
        self.dense_first_layer = dense_first_layer
        self.dense_last_layer = dense_last_layer
        self.indivisible = _plain(indivisible)
        self.sparse_dim = _plain(sparse_dim)
        self.export = export
        self.sparsifier: NMSparsifier | None = None
        self.flops: FlopsAccountant | None = None
        self.export_report: dict[str, Any] = {}
        self.ranks_checked = 0

    # -- install and drive ----------------------------------------------------------------------
    @staticmethod
    def _model(pl_module) -> torch.nn.Module:
        return getattr(pl_module, "model", pl_module)

    def preflight(self, method: pl.LightningModule) -> None:
        """Install the parametrizations at build time, so a bad layer fails before anything runs."""
        check_sparsity_contract(method, sparse=True)
        if self.sparsifier is None:
            model = self._model(method)
            self.sparsifier = NMSparsifier(
                model,
                self.schedule,
                include=self.include,
                exclude=self.exclude,
                dense_first_layer=self.dense_first_layer,
                dense_last_layer=self.dense_last_layer,
                indivisible=self.indivisible,
                sparse_dim=self.sparse_dim,
            )
            self.flops = FlopsAccountant(model, self.sparsifier.layers)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.preflight(pl_module)
        scaler = getattr(trainer.precision_plugin, "scaler", None)  # 16-mixed: SR-STE's term must be scaled too
        if scaler is not None:
            self.sparsifier.set_loss_scale(lambda: scaler._scale if scaler.is_enabled() else None)

    def _clock_of(self, trainer: pl.Trainer) -> int:
        return trainer.global_step if self.clock == "step" else trainer.current_epoch

    def _length_of(self, trainer: pl.Trainer) -> int:
        total = trainer.estimated_stepping_batches if self.clock == "step" else trainer.max_epochs
        if not isinstance(total, int) or total <= 0:
            raise ConfigError(
                "sparsity.clock",
                f"the N:M schedule needs a finite training length, got {total}",
                "set trainer.max_epochs",
            )
        return total

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _, total = self.sparsifier.position()
        if total <= 0:  # fresh run; a resumed one keeps the length its buffers were restored with
            total = self._length_of(trainer)
        self.sparsifier.set_position(self._clock_of(trainer), total)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx: int) -> None:
        _, total = self.sparsifier.position()
        self.sparsifier.set_position(self._clock_of(trainer), total)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        phase = self.sparsifier.phase()  # the phase this batch trained in (the clock moves at the next start)
        self.flops.step(*step_densities(phase, self.sparsifier.layers))
        # Only where a row is written, and at the epoch's end (for callback_metrics): the values
        # are the schedule's current ones, so the rows are those of logging every step.
        if not (logger_writes_at_this_batch(trainer) or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch):
            return
        pl_module.log_dict(
            {
                "nm/alpha": phase.alpha,
                "nm/n": float(phase.n),
                "nm/m": float(phase.m),
                "nm/density": phase.density,
                "flops/train_cum": self.flops.train_total * trainer.world_size,
            },
            on_step=True,
            on_epoch=False,
            rank_zero_only=True,
        )

    # -- checkpoint state (the schedule position lives in the model's buffers) -------------------
    def state_dict(self) -> dict[str, Any]:
        return {"flops": self.flops.state_dict()} if self.flops is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.flops.load_state_dict(state["flops"])  # setup() ran first: the accountant exists

    # -- results --------------------------------------------------------------------------------
    def summary_section(self, trainer: pl.Trainer) -> dict[str, Any]:
        if self.sparsifier is None:
            return {}
        phase = self.sparsifier.verify(check_ranks=False)  # ranks were compared in on_train_end
        stats = self.sparsifier.layer_stats()
        model = self.sparsifier.model
        sparse_nonzero = sum(s["nonzero"] for s in stats.values())
        sparse_numel = sum(s["numel"] for s in stats.values())
        all_layers = prunable_layers(model)
        model_numel = sum(dense_weight(layer).numel() for layer in all_layers.values())
        dense_numel = model_numel - sparse_numel
        sparsity = {
            "method": "nm",
            "mode": self.schedule.mode,
            "target": self.schedule.pattern,
            "stages": [f"{n}:{m}" for n, m in self.schedule.stages],
            "final_pattern": phase.pattern,
            "at_target": phase == self.schedule.final_phase(),
            "position": dict(zip(("clock", "total"), self.sparsifier.position(), strict=True)),
            "clock": self.clock,
            "density": sparse_nonzero / sparse_numel,
            "model_density": (sparse_nonzero + dense_numel) / model_numel,
            "evaluation": "binary N:M mask (alpha=0), recomputed from the final weights",
            "grouping": GROUPING[self.sparse_dim],
            "layers": stats,
            "dense_layers": [name for name in all_layers if name not in stats],
            "dense_by_shape": list(self.sparsifier.dense_by_shape),
            "masks_checked_identical_on_ranks": self.ranks_checked,
        }
        sections: dict[str, Any] = {"sparsity": sparsity}
        f = self.flops
        if f is not None and f.dense_total:
            world = trainer.world_size  # every rank trains its own share of the samples
            final, layers = self.schedule.final_phase(), list(self.sparsifier.layers)
            inference = f.forward_flops({name: forward_density(final) for name in layers})
            # 2:4 tensor cores need the groups along the reduction (input) dimension
            on_2to4 = hardware_2to4_density(final) if self.sparse_dim == "row" else 1.0
            hardware = f.forward_flops({name: on_2to4 for name in layers})
            sections["flops"] = {
                "convention": FLOPS_CONVENTION,
                "train_total": f.train_total * world,
                "train_dense_total": f.dense_total * world,
                "train_relative_to_dense": f.train_relative_to_dense,
                "inference_forward": inference,
                "dense_forward": f.f_dense,
                "inference_relative_to_dense": inference / f.f_dense,
                "inference_2to4_hardware_forward": hardware,
                "inference_2to4_hardware_relative_to_dense": hardware / f.f_dense,
                "samples_trained": f.samples_trained * world,
                "samples_forward_only": f.samples_forward_only * world,
                "sparse_layers_dense_forward": dict(f.f_layer),
            }
        if self.export_report:
            sections["export"] = self.export_report
        return sections

    # -- export ---------------------------------------------------------------------------------
    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        self.sparsifier.verify()  # exact N:M counts, and (under DDP) the same masks on every rank
        self.ranks_checked = trainer.world_size
        self._export(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module) -> None:
        # A run resumed from its final checkpoint (killed after training, before its summary) has
        # nothing left to train, and Lightning then skips on_train_end: verify and export here.
        if self.ranks_checked == 0 and trainer.world_size == 1:
            self.on_train_end(trainer, pl_module)

    def _export(self, trainer: pl.Trainer) -> None:
        if not self.export or not trainer.is_global_zero:
            return
        model = self.sparsifier.model
        path = Path(trainer.default_root_dir) / "nm_export.pt"
        meta = {"target": self.schedule.pattern, "mode": self.schedule.mode, "position": self.sparsifier.position()}
        state = export_state(model, meta)
        with replacing(path) as file:
            torch.save(state, file)
        backend = default_backend()
        layers = {name: self.sparsifier.layers[name] for name in state["masks"]}
        eligibility = {
            name: ineligible_reason(layer, state["state_dict"][f"{name}.weight"], torch.float16, backend) or "eligible"
            for name, layer in layers.items()
        }
        reason = semi_structured_unsupported_reason()
        self.export_report = {
            "file": str(path),
            "backend": backend,
            "semi_structured_here": reason is None,
            "semi_structured_unavailable_reason": reason,
            "layers_fp16": eligibility,
        }
        if reason:
            log.info("N:M export: wrote %s; real 2:4 tensors not built here: %s", path, reason)
        else:
            log.info("N:M export: wrote %s; build 2:4 tensors with experiments/check_nm_export.py --run <dir>", path)
