"""The sparsity engine's settings: one validated dataclass, plus the chosen rule's ``Options``.

The Hydra group ``sparsity`` maps 1:1 onto these fields and the rule's (through
``SparsityCallback``, which hands its node over whole), and a hand-written loop passes the same
names to ``Sparsifier``. ``SparsityOptions.from_values`` splits a flat mapping into the engine's
fields and the rule's; an unknown key or a bad value is one ``ConfigError`` line naming
``sparsity.<key>``, the closest valid key and the allowed values, before training.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from torch import nn

from sparseforge.errors import ConfigError
from sparseforge.options import as_plain, build_options, unknown_key_error
from sparseforge.sparsity.backends.execution import BACKENDS
from sparseforge.sparsity.distributions import layer_nnz, weight_shapes
from sparseforge.sparsity.rules import RULES, UpdateRule
from sparseforge.sparsity.targets import select_layers

log = logging.getLogger("sparseforge")
DISTRIBUTIONS = ("uniform", "er", "erk", "uniform_plus", "erk_plus")
PLACEMENTS = ("random", "magnitude")
PLUS_DISTRIBUTIONS = ("uniform_plus", "erk_plus")
DROP_SCHEDULES = ("constant", "cosine", "linear")
SCHEDULE_SCOPES = ("run", "task")


@dataclass
class SparsityOptions:
    #: dense (no masks, FLOPs only) | static (random-pruning baseline) | set | rigl | unfired | momentum
    #: | tdm (SparCL's epoch-triggered task-aware dynamic masking; options in ``tdm``)
    update_rule: str = "rigl"
    #: Fraction of the sparse layers' weights that are non-zero (layers kept dense are outside it).
    density: float = 0.1
    #: uniform | er | erk | uniform_plus | erk_plus (Random_Pruning's: first layer dense and the
    #: classifier at 0.2 / classifier at ``fc_density``, the rest uniform / ERK; see distributions.py)
    distribution: str = "erk"
    #: ERK scores are raised to this power (0 = uniform, 1 = ERK); ignored by uniform and er.
    erk_power_scale: float = 1.0
    #: The classifier's (last sparse layer's) density under uniform_plus (null: 0.2, used when
    #: density < 0.2) and erk_plus (null: 1.0, Random_Pruning's --fc_density default).
    fc_density: float | None = None
    dense_first_layer: bool = False
    #: Keep the first layer dense (outside the budget) only when it is a convolution: RigL's code
    #: keeps its ResNets' / WRNs' / MobileNets' first conv dense but masks its MNIST MLP's first layer.
    dense_first_conv: bool = False
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
    seed: int = 0
    #: Verify exact counts, zero pruned weights and rank agreement after every mask change.
    check_every_update: bool = True
    #: How sparse layers execute: masked (dense tensors with masks; default, every device) | csr
    #: (torch.sparse CSR, Linear, CPU) | sparseprop (the SparseProp extra, Linear+Conv2d, CPU) |
    #: auto (per layer, the fastest kernel timed at the real input). See docs/sparse-execution.md.
    backend: str = "masked"
    #: The masked path multiplies by a copy of each mask in the weight's dtype, cached per mask:
    #: about 4x faster masking on a CPU, for 4 bytes per sparse weight (fp32; reported as
    #: mask_cache_bytes in summary.json). false: zero through the bool masks, no extra memory.
    mask_cache: bool = True
    #: The update rule's own settings (its ``Options``; e.g. ``regrow_dropped``, ``momentum_decay``,
    #: ``tdm``). Built by ``from_values`` from the same flat mapping.
    rule: Any = None

    def __post_init__(self) -> None:
        self.validate()
        rule_options = rule_class(self.update_rule).Options
        if self.rule is None or isinstance(self.rule, Mapping):
            self.rule = build_options(rule_options, self.rule, "sparsity")
        elif not isinstance(self.rule, rule_options):
            raise TypeError(f"rule options {type(self.rule).__name__} do not belong to update_rule={self.update_rule}")

    @classmethod
    def from_values(cls, values: Mapping[str, Any] | None = None, prefix: str = "sparsity") -> SparsityOptions:
        """Options from one flat mapping (a Hydra node, keyword arguments): the engine's fields
        and the chosen rule's. Keys of other registered rules are ignored (say, ``tdm`` after
        ``sparsity.update_rule=static``); keys no rule knows are errors."""
        values = dict(values or {})
        name = values.get("update_rule", cls.update_rule)
        rule_cls = rule_class(str(getattr(name, "value", name)), prefix)
        own = {f.name for f in fields(cls)} - {"rule"}
        mine = {f.name for f in fields(rule_cls.Options)}
        others = {f.name for _, r in RULES.items() for f in fields(r.Options)} - mine
        for key in values:
            if key not in own | mine | others:
                raise unknown_key_error(prefix, key, own | mine | others)
        ignored = sorted(k for k in values if k in others and k not in own)
        if ignored:
            log.info("%s: %s not used by update_rule=%s", prefix, ", ".join(ignored), name)
        rule = build_options(rule_cls.Options, {k: v for k, v in values.items() if k in mine}, prefix)
        engine = {k: as_plain(v) for k, v in values.items() if k in own}
        for key in ("include", "exclude"):
            if engine.get(key) is not None and not isinstance(engine[key], str):
                engine[key] = list(engine[key])
        return cls(**engine, rule=rule)

    def replace(self, **values: Any) -> SparsityOptions:
        """These options with some values changed (the rule's included)."""
        flat = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rule"}
        flat.update(dataclasses.asdict(self.rule))
        return SparsityOptions.from_values({**flat, **values})

    def as_dict(self) -> dict[str, Any]:
        """Flat and plain (the config's keys): for checkpoints and summaries."""
        flat = {f.name: as_plain(getattr(self, f.name)) for f in fields(self) if f.name != "rule"}
        return {**flat, **as_plain(self.rule)}

    @property
    def is_dense(self) -> bool:
        return self.update_rule == "dense"

    @property
    def is_dynamic(self) -> bool:
        return self.update_rule not in ("dense", "static")

    def validate(self, prefix: str = "sparsity") -> None:
        def bad(key: str, problem: str, allowed: str) -> ConfigError:
            return ConfigError(f"{prefix}.{key}", problem, allowed)

        rule_class(self.update_rule, prefix)
        for key, allowed in (
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
        fc = self.fc_density
        if fc is not None and (not _is_number(fc) or not 0.0 < fc <= 1.0):
            raise bad("fc_density", f"must be in (0, 1] or null, got {fc!r}", "0 < fc_density <= 1")
        if fc is not None and self.distribution not in PLUS_DISTRIBUTIONS:
            raise bad("fc_density", f"is used by uniform_plus and erk_plus, not {self.distribution}", "null")
        if self.distribution in PLUS_DISTRIBUTIONS and self.dense_last_layer:
            raise bad("dense_last_layer", f"{self.distribution} sets the classifier's density itself", "false")
        if self.distribution == "uniform_plus":
            for key in ("dense_first_layer", "dense_first_conv"):
                if getattr(self, key):
                    raise bad(key, "uniform_plus keeps the first layer dense itself (inside the budget)", "false")
        if self.is_dense and self.density != 1.0:
            raise bad("density", f"update_rule=dense trains every weight, but density={self.density}", "density: 1.0")
        for key in ("include", "exclude"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, str) or not all(isinstance(p, str) for p in value)):
                raise bad(key, f"must be a list of module-name patterns, got {value!r}", "e.g. ['layer*.*.conv?']")

    def sparse_layers(self, model: nn.Module, config_prefix: str = "sparsity") -> dict[str, nn.Module]:
        """The layers of ``model`` these options make sparse (``targets.select_layers``)."""
        return select_layers(
            model,
            self.include,
            self.exclude,
            self.dense_first_layer,
            self.dense_last_layer,
            config_prefix,
            dense_first_conv=self.dense_first_conv,
        )

    def layer_nnz(self, layers: Mapping[str, nn.Module], config_prefix: str = "sparsity") -> dict[str, int]:
        """Exact non-zeros per layer at ``density`` under ``distribution`` (``distributions.layer_nnz``)."""
        return layer_nnz(
            weight_shapes(layers),
            self.density,
            self.distribution,
            self.erk_power_scale,
            config_prefix,
            fc_density=self.fc_density,
        )

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "rule"]


class _Dense(UpdateRule):
    """``update_rule=dense``: no masks (the engine only counts FLOPs)."""


def rule_class(name: str, prefix: str = "sparsity") -> type[UpdateRule]:
    if name == "dense":
        return _Dense
    if name not in RULES:
        raise ConfigError(f"{prefix}.update_rule", f"unknown value {name!r}", ", ".join(["dense", *RULES.names()]))
    return RULES.get(name)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
