"""Every knob of the sparsity engine in one validated dataclass.

The Hydra group ``sparsity`` maps 1:1 onto these fields (through ``SparsityCallback``), and a
hand-written loop passes the same names to ``Sparsifier``. Validation raises ``ConfigError``
naming ``sparsity.<field>`` and the allowed values, so a bad value is one line before training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sparseforge.errors import ConfigError
from sparseforge.sparsity.backends.execution import BACKENDS
from sparseforge.sparsity.rules import RULES

UPDATE_RULES = ("dense", *RULES)  # a rule registered in RULES is a valid update_rule
DISTRIBUTIONS = ("uniform", "er", "erk")
PLACEMENTS = ("random", "magnitude")
DROP_SCHEDULES = ("constant", "cosine", "linear")
SCHEDULE_SCOPES = ("run", "task")


@dataclass
class SparsityOptions:
    #: dense (no masks, FLOPs only) | static (random-pruning baseline) | set | rigl | unfired | momentum
    #: | tdm (SparCL's epoch-triggered task-aware dynamic masking; options in ``tdm``)
    update_rule: str = "rigl"
    #: Fraction of the sparse layers' weights that are non-zero (layers kept dense are outside it).
    density: float = 0.1
    distribution: str = "erk"
    #: ERK scores are raised to this power (0 = uniform, 1 = ERK); ignored by uniform and er.
    erk_power_scale: float = 1.0
    dense_first_layer: bool = False
    dense_last_layer: bool = False
    include: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    #: Where the initial non-zeros go: random (seeded, identical on every rank) or largest |w|.
    placement: str = "random"
    #: Multiply each sparse layer's initial weights by 1/sqrt(density), so activations keep the
    #: variance of the dense initialisation (the density-scaled fan-in of Liu et al.'s ``--scale``).
    rescale_init: bool = False
    #: Optimizer steps between topology updates (ΔT).
    delta_t: int = 100
    #: Drop fraction α at the first update; the schedule anneals it.
    drop_fraction: float = 0.3
    drop_schedule: str = "cosine"
    #: Updates stop after this fraction of the schedule's steps (RigL's T_end = 0.75).
    end_fraction: float = 0.75
    #: run: one schedule over the whole run; task: the schedule restarts at every task.
    schedule_scope: str = "run"
    #: Whether a weight dropped in an update may be regrown in the same update.
    regrow_dropped: bool = False
    #: EMA decay of the dense gradient used by the momentum growth rule.
    momentum_decay: float = 0.9
    seed: int = 0
    #: Verify exact counts, zero pruned weights and rank agreement after every mask change.
    check_every_update: bool = True
    #: How sparse layers execute: masked (dense tensors with masks; default, every device) | csr
    #: (torch.sparse CSR, Linear, CPU) | sparseprop (the SparseProp extra, Linear+Conv2d, CPU) |
    #: auto (per layer, the fastest kernel timed at the real input). See docs/sparse-execution.md.
    backend: str = "masked"
    #: Options of the tdm rule (``sparseforge.sparsity.rules.tdm.TDMSchedule`` fields); ignored by
    #: the other rules.
    tdm: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.tdm is not None:  # plain values (a Hydra node would not load from a weights-only checkpoint)
            self.tdm = {
                str(k): list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v
                for k, v in self.tdm.items()
            }
        self.validate()

    @property
    def is_dense(self) -> bool:
        return self.update_rule == "dense"

    @property
    def is_dynamic(self) -> bool:
        return self.update_rule not in ("dense", "static")

    def validate(self, prefix: str = "sparsity") -> None:
        def bad(key: str, problem: str, allowed: str) -> ConfigError:
            return ConfigError(f"{prefix}.{key}", problem, allowed)

        for key, allowed in (
            ("update_rule", UPDATE_RULES),
            ("distribution", DISTRIBUTIONS),
            ("placement", PLACEMENTS),
            ("drop_schedule", DROP_SCHEDULES),
            ("schedule_scope", SCHEDULE_SCOPES),
            ("backend", BACKENDS),
        ):
            value = getattr(self, key)
            if value not in allowed:
                raise bad(key, f"unknown value {value!r}", ", ".join(allowed))
        if not _is_number(self.density) or not 0.0 < self.density <= 1.0:
            raise bad("density", f"must be in (0, 1], got {self.density!r}", "0 < density <= 1")
        if not _is_number(self.drop_fraction) or not 0.0 <= self.drop_fraction < 1.0:
            raise bad("drop_fraction", f"must be in [0, 1), got {self.drop_fraction!r}", "0 <= drop_fraction < 1")
        if not _is_number(self.end_fraction) or not 0.0 < self.end_fraction <= 1.0:
            raise bad("end_fraction", f"must be in (0, 1], got {self.end_fraction!r}", "0 < end_fraction <= 1")
        if isinstance(self.delta_t, bool) or not isinstance(self.delta_t, int) or self.delta_t < 1:
            raise bad("delta_t", f"must be an integer >= 1, got {self.delta_t!r}", "delta_t >= 1 optimizer steps")
        if not _is_number(self.erk_power_scale) or self.erk_power_scale < 0:
            raise bad("erk_power_scale", f"must be >= 0, got {self.erk_power_scale!r}", "0 (uniform) .. 1 (ERK)")
        if not _is_number(self.momentum_decay) or not 0.0 <= self.momentum_decay < 1.0:
            raise bad("momentum_decay", f"must be in [0, 1), got {self.momentum_decay!r}", "0 <= momentum_decay < 1")
        if self.is_dense and self.density != 1.0:
            raise bad("density", f"update_rule=dense trains every weight, but density={self.density}", "density: 1.0")
        if self.update_rule == "tdm":
            from sparseforge.sparsity.rules.tdm import TDMSchedule

            TDMSchedule(**dict(self.tdm or {}))
        for key in ("include", "exclude"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, str) or not all(isinstance(p, str) for p in value)):
                raise bad(key, f"must be a list of module-name patterns, got {value!r}", "e.g. ['layer*.*.conv?']")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
