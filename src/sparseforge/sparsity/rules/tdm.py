"""``tdm``: SparCL's task-aware dynamic masking (Wang et al., NeurIPS 2022), as released.

One mask shared by every task. The rule is *epoch*-triggered: at epochs ``0, every, 2·every, ...``
of each task (the epoch counter restarts at every task, so the whole schedule does) each sparse
layer ``l`` with ``N_l`` weights and base count ``n_l`` (its count at ``sparsity.density``) is

1. pruned to ``n_l + round(prune_offset·N_l)`` non-zeros: the active weights with the smallest
   importance ``|w| + grad_weight·|g|`` are dropped (exact count; nothing is dropped if the layer
   already has fewer), where ``g`` is the gradient of the last optimizer step before the update
   (the last batch of the previous epoch, or of the previous task at epoch 0; none at the very
   first update, which is then magnitude only);
2. grown to ``n_l + round(grow_offset·N_l)`` non-zeros uniformly at random (seeded, identical on
   every rank) among the inactive weights; new weights start at 0 with zeroed optimizer state.

The offsets are piecewise constant over the task's epochs, with phase boundaries
``phase_epochs``. The release's schedule for a 50-epoch task (``every_epochs 5``,
``phase_epochs [5, 45]``, prune offsets ``[0, -0.01, 0]``, grow offsets ``[+0.01, 0, 0]``) gives:
epoch 0: +1% of each layer (the task starts with 1% more capacity); epoch 5: drop 2%, regrow 1%
(back to the target); epochs 10..40: drop 1% and regrow 1%; epoch 45: no change (the topology is
frozen for the last 5 epochs).

Where this differs from the release, on purpose (see SparCL pitfalls in the reference):

- counts are exact top-k per layer, not a strict ``>`` against a percentile over the whole
  tensor (which ties make approximate);
- the mask is an explicit boolean state, never re-derived from ``weight != 0`` (a grown weight
  still at exactly 0 stays active);
- ``g`` is captured explicitly every optimizer step (Lightning zeroes ``.grad``): with
  ``grad_source: post_dgm`` (the release) it is the gradient the optimizer saw, i.e. after the
  weight mask and SparCL's gradient mask; ``pre_dgm`` uses it before the gradient mask.

With ``regrow_dropped`` (the release: growth candidates are every zero after the drop), a weight
dropped and regrown in the same update restarts at 0 like any new connection.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sparseforge.errors import ConfigError
from sparseforge.sparsity.placement import top_n_mask
from sparseforge.sparsity.rules.base import RULES, UpdateRule
from sparseforge.sparsity.rules.set import random_scores

GRAD_SOURCES = ("post_dgm", "pre_dgm")


@dataclass(frozen=True)
class TDMSchedule:
    """When TDM acts and to which counts, as a function of the epoch within the task."""

    every_epochs: int = 5
    phase_epochs: Sequence[int] = (5, 45)
    prune_offsets: Sequence[float] = (0.0, -0.01, 0.0)
    grow_offsets: Sequence[float] = (0.01, 0.0, 0.0)
    grad_weight: float = 0.5
    grad_source: str = "post_dgm"

    def __post_init__(self) -> None:
        object.__setattr__(self, "phase_epochs", tuple(int(e) for e in self.phase_epochs))
        object.__setattr__(self, "prune_offsets", tuple(float(o) for o in self.prune_offsets))
        object.__setattr__(self, "grow_offsets", tuple(float(o) for o in self.grow_offsets))
        self.validate()

    def validate(self, prefix: str = "sparsity.tdm") -> None:
        def bad(key: str, problem: str, allowed: str) -> ConfigError:
            return ConfigError(f"{prefix}.{key}", problem, allowed)

        if isinstance(self.every_epochs, bool) or not isinstance(self.every_epochs, int) or self.every_epochs < 1:
            raise bad("every_epochs", f"must be an integer >= 1, got {self.every_epochs!r}", "every_epochs >= 1")
        phases = list(self.phase_epochs)
        if any(e < 1 for e in phases) or phases != sorted(set(phases)):
            raise bad("phase_epochs", f"must be strictly increasing epochs >= 1, got {phases}", "e.g. [5, 45]")
        for key in ("prune_offsets", "grow_offsets"):
            offsets = getattr(self, key)
            if len(offsets) != len(phases) + 1:
                raise bad(
                    key,
                    f"needs one offset per phase: {len(phases) + 1} for phase_epochs {phases}, got {len(offsets)}",
                    f"a list of {len(phases) + 1} density offsets",
                )
            if any(not math.isfinite(o) or not -1.0 < o < 1.0 for o in offsets):
                raise bad(key, f"offsets must be in (-1, 1), got {list(offsets)}", "e.g. [0.01, 0.0, 0.0]")
        if not math.isfinite(self.grad_weight) or self.grad_weight < 0:
            raise bad("grad_weight", f"must be >= 0, got {self.grad_weight!r}", "grad_weight >= 0 (0.5 in the release)")
        if self.grad_source not in GRAD_SOURCES:
            raise bad("grad_source", f"unknown value {self.grad_source!r}", ", ".join(GRAD_SOURCES))

    def is_update_epoch(self, epoch_in_task: int) -> bool:
        return epoch_in_task % self.every_epochs == 0

    def phase(self, epoch_in_task: int) -> int:
        return bisect.bisect_right(self.phase_epochs, epoch_in_task)

    def counts(self, base: int, numel: int, current: int, epoch_in_task: int) -> tuple[int, int]:
        """(non-zeros after the drop, non-zeros after the growth) of one layer at this update."""
        phase = self.phase(epoch_in_task)
        keep = _clip(base + _round(self.prune_offsets[phase] * numel), numel)
        grow_to = _clip(base + _round(self.grow_offsets[phase] * numel), numel)
        after_drop = min(current, keep)
        return after_drop, max(after_drop, grow_to)

    def scheduled_nnz(self, base: int, numel: int, current: int, epoch_in_task: int) -> int:
        return self.counts(base, numel, current, epoch_in_task)[1]


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def _clip(n: int, numel: int) -> int:
    return max(1, min(numel, n))


@RULES.register("tdm")
class TDM(UpdateRule):
    trigger = "epoch"
    observes_every_step = True  # keeps the last step's gradient for the next update's importance
    tensor_state = ("last_grads",)

    @dataclass
    class Options(UpdateRule.Options):
        #: Growth candidates: every inactive weight after the drop (the release), or only the
        #: weights inactive before it.
        regrow_dropped: bool = True
        tdm: TDMSchedule = field(default_factory=TDMSchedule)

    def __init__(self, options: Options | None = None, **values: Any):
        super().__init__(options, **values)
        self.schedule = self.options.tdm
        self.last_grads: dict[str, torch.Tensor] = {}

    # -- the gradient of the last optimizer step -------------------------------------------------------
    @torch.no_grad()
    def observe(self, sparsifier, dense_grads) -> None:
        masks = sparsifier.masks
        for name, grad in dense_grads.items():
            if grad is None:
                continue
            stored = self.last_grads.get(name)
            if stored is None or stored.shape != grad.shape or stored.device != grad.device:
                stored = self.last_grads[name] = torch.empty_like(grad, dtype=torch.float32)
            stored.copy_(grad).mul_(masks[name])
            if self.schedule.grad_source == "post_dgm" and name in masks.grad_masks:
                stored.mul_(masks.grad_masks[name])

    # -- the update ----------------------------------------------------------------------------------
    def base_nnz(self, sparsifier) -> dict[str, int]:
        """Each layer's count at ``sparsity.density`` (what the schedule's offsets are relative to)."""
        return sparsifier.options.layer_nnz(sparsifier.masks.layers)

    def scheduled_nnz(self, sparsifier, epoch_in_task: int, current: Mapping[str, int]) -> dict[str, int]:
        masks = sparsifier.masks
        base = self.base_nnz(sparsifier)
        return {n: self.schedule.scheduled_nnz(base[n], masks.numel(n), current[n], epoch_in_task) for n in masks}

    @torch.no_grad()
    def epoch_proposal(self, sparsifier, epoch_in_task: int):
        """``(new_masks, target_nnz, restart)`` for this epoch, or None when nothing changes."""
        if not self.schedule.is_update_epoch(epoch_in_task):
            return None
        masks = sparsifier.masks
        base = self.base_nnz(sparsifier)
        new_masks, targets, restart = {}, {}, {}
        for position, name in enumerate(masks):
            mask = masks[name]
            weight = masks.weight(name).detach()
            current = int(mask.count_nonzero())
            after_drop, final = self.schedule.counts(base[name], mask.numel(), current, epoch_in_task)
            if after_drop == current and final == current:
                continue
            kept = mask
            if after_drop < current:
                importance = weight.abs().float()
                grad = self.last_grads.get(name)
                if grad is not None and self.schedule.grad_weight:
                    g = grad.to(importance.device).abs()
                    g = torch.where(torch.isfinite(g), g, 0.0)  # a step the AMP scaler skipped
                    importance = importance + self.schedule.grad_weight * g
                kept = top_n_mask(importance.masked_fill(~mask, -math.inf), after_drop)
            n_grow = final - after_drop
            candidates = ~kept if self.options.regrow_dropped else ~mask
            scores = random_scores(sparsifier, name, position).masked_fill(~candidates, -math.inf)
            grown = top_n_mask(scores, n_grow)
            new_masks[name] = kept | grown
            targets[name] = final
            restart[name] = grown & mask  # dropped and regrown now: a new connection, starts at 0
        if not new_masks:
            return None
        return new_masks, targets, restart
