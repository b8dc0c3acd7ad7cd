"""``momentum``: RigL's SNFS baseline (google-research/rigl ``sparse_optimizers.py:
SparseMomentumOptimizer``, after Dettmers & Zettlemoyer's sparse momentum without
redistribution): RigL's schedule and drop, grow the largest |EMA of the dense gradient|.

This is not CL-with-DST's ``momentum`` growth, which (with its default Adam) scores Adam's
m / (sqrt(v) + eps); that variant belongs to the CL-with-DST method. The optimizer's own
momentum cannot serve here: gradients of pruned weights are masked before the step, so their
momentum holds nothing. This rule keeps its own exponential moving average of the dense gradient
(decay ``momentum_decay``, RigL's ``momentum=0.9``), updated every step before masking; it costs
one float buffer per sparse weight and one in-place update per step. As RigL's class (which
extends its SET optimizer), grow candidates are every weight inactive after the drop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sparseforge.options import check
from sparseforge.sparsity.rules.base import RULES, DropAndGrow


@RULES.register("momentum")
class SNFSMomentum(DropAndGrow):
    observes_every_step = True
    tensor_state = ("ema",)

    @dataclass
    class Options(DropAndGrow.Options):
        #: RigL's SparseMomentumOptimizer extends its SET optimizer: candidates after the drop.
        regrow_dropped: bool = True
        #: EMA decay of the dense gradient whose magnitude ranks the grow candidates.
        momentum_decay: float = 0.9

        def __post_init__(self) -> None:
            d = self.momentum_decay
            check("sparsity.momentum_decay", 0.0 <= d < 1.0, f"must be in [0, 1), got {d!r}", "0 <= momentum_decay < 1")

    def __init__(self, options: Options | None = None, **values: Any):
        super().__init__(options, **values)
        self.ema: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def observe(self, sparsifier, dense_grads):
        for name, grad in dense_grads.items():
            if grad is None:
                continue
            if name not in self.ema:
                self.ema[name] = torch.zeros_like(grad)
            decay = self.options.momentum_decay
            self.ema[name].mul_(decay).add_(grad, alpha=1 - decay)

    def grow_scores(self, sparsifier, name, position, dense_grad):
        ema = self.ema.get(name)
        return ema.abs() if ema is not None else torch.zeros_like(sparsifier.masks.weight(name))
