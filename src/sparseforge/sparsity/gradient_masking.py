"""SparCL's dynamic gradient masking (DGM): only part of the active weights are updated.

Every ``refresh_every`` optimizer steps (the counter restarts each epoch, so the first step of
every epoch refreshes too, right after a TDM update) the mask is recomputed from the current
gradient: per sparse layer, the ``k`` active weights with the largest ``|g|`` keep their gradient
(exact top-k, ties broken deterministically). In between, that gradient mask is reused.

``k`` follows the release's semantics by default (``relative_to: layer``): ``k =
round((1 - gradient_sparsity) · N_l)`` of the layer's ``N_l`` entries, at most the number of
active weights. With the release's ``gradient_sparsity`` 0.8 and weight density 0.25 that is 20%
of the layer, i.e. 80% of the active weights are updated and the 20% with the smallest gradients
are frozen until the next refresh. With ``relative_to: active`` the fraction is of the active
weights instead (``k = round((1 - gradient_sparsity) · n_active)``): at density 0.25,
``gradient_sparsity 0.2`` there equals the release's 0.8 here.

The masks go to ``MaskSet.set_grad_masks``, which zeroes the gradients outside them and also
restores those weights after the optimizer step. So masked weights do not move even when the
optimizer has momentum or weight decay (with momentum-free SGD without weight decay, the
release's optimizer, a zero gradient alone already means no update). What momentum does change:
a frozen weight's momentum buffer keeps decaying while it is frozen and acts again once the
weight is unfrozen.

FLOPs: on a refresh step the whole weight-masked gradient is needed to rank it, so the weight
gradient costs the layer's weight density; on the other steps it costs ``k / N_l``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from sparseforge.errors import ConfigError
from sparseforge.sparsity.masks import MaskSet
from sparseforge.sparsity.placement import top_n_mask
from sparseforge.utils.tensors import all_finite

RELATIVE_TO = ("layer", "active")


class DynamicGradientMasking:
    def __init__(
        self,
        gradient_sparsity: float,
        refresh_every: int,
        relative_to: str = "layer",
        config_prefix: str = "method.dgm",
    ):
        relative_to = getattr(relative_to, "value", relative_to)
        if (
            isinstance(gradient_sparsity, bool)
            or not isinstance(gradient_sparsity, (int, float))
            or not (0.0 <= gradient_sparsity < 1.0)
        ):
            raise ConfigError(f"{config_prefix}.gradient_sparsity", f"must be in [0, 1), got {gradient_sparsity!r}")
        if isinstance(refresh_every, bool) or not isinstance(refresh_every, int) or refresh_every < 1:
            raise ConfigError(f"{config_prefix}.refresh_every", f"must be an integer >= 1, got {refresh_every!r}")
        if relative_to not in RELATIVE_TO:
            raise ConfigError(f"{config_prefix}.relative_to", f"unknown value {relative_to!r}", ", ".join(RELATIVE_TO))
        self.gradient_sparsity = float(gradient_sparsity)
        self.refresh_every = int(refresh_every)
        self.relative_to = relative_to
        self.iteration = 0  # optimizer steps since the epoch began
        self.refreshes = 0
        self.refreshed = False  # whether the current step recomputed the mask
        self.kept: dict[str, int] = {}  # per layer: gradient entries kept at the last refresh

    def start_epoch(self) -> None:
        self.iteration = 0

    def keep_count(self, masks: MaskSet, name: str) -> int:
        n_active = int(masks[name].count_nonzero())
        of = masks.numel(name) if self.relative_to == "layer" else n_active
        return min(n_active, math.floor((1.0 - self.gradient_sparsity) * of + 0.5))

    @torch.no_grad()
    def before_step(self, masks: MaskSet) -> None:
        """After backward, before the gradients are masked: refresh the gradient mask when due."""
        due = self.iteration % self.refresh_every == 0 or not masks.grad_masks
        self.iteration += 1
        self.refreshed = False
        if not due:
            return
        grads = {name: masks.grad(name) for name in masks}
        if not all(g is not None and all_finite(g) for g in grads.values()):
            return  # a skipped AMP step or a layer outside the loss: keep the previous mask
        new, kept = {}, {}
        for name, grad in grads.items():
            kept[name] = self.keep_count(masks, name)
            scores = grad.detach().abs().masked_fill(~masks[name], -math.inf)
            new[name] = top_n_mask(scores, kept[name])
        masks.set_grad_masks(new)
        self.kept = kept
        self.refreshes += 1
        self.refreshed = True

    def weight_grad_density(self, masks: MaskSet) -> dict[str, float] | None:
        """Per-layer density of this step's weight gradient (None: the weight density)."""
        if self.refreshed or not self.kept:
            return None
        return {name: k / masks.numel(name) for name, k in self.kept.items()}

    def mean_gradient_density(self, masks: MaskSet) -> float | None:
        """Kept gradient entries over all entries of the sparse layers, at the last refresh."""
        if not self.kept:
            return None
        return sum(self.kept.values()) / sum(masks.numel(n) for n in self.kept)

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "refreshes": self.refreshes, "kept": dict(self.kept)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.refreshes = int(state["refreshes"])
        self.kept = {str(k): int(v) for k, v in state.get("kept", {}).items()}
