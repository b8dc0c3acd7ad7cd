"""``momentum`` (SNFS-style growth, as in CL-with-DST): grow the largest |EMA of the dense gradient|.

The optimizer's own momentum cannot serve: gradients of pruned weights are masked before the
step, so their momentum holds nothing. This rule keeps its own exponential moving average of
the dense gradient (decay ``momentum_decay``), updated every step before masking. It costs one
float buffer per sparse weight and one in-place update per step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sparseforge.sparsity.rules.base import DropAndGrow


class Momentum(DropAndGrow):
    name = "momentum"
    observes_every_step = True

    def __init__(self, momentum_decay: float = 0.9, **kwargs: Any):
        super().__init__(**kwargs)
        self.decay = momentum_decay
        self.ema: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def observe(self, sparsifier, dense_grads):
        for name, grad in dense_grads.items():
            if grad is None:
                continue
            if name not in self.ema:
                self.ema[name] = torch.zeros_like(grad)
            self.ema[name].mul_(self.decay).add_(grad, alpha=1 - self.decay)

    def grow_scores(self, sparsifier, name, position, dense_grad):
        ema = self.ema.get(name)
        return ema.abs() if ema is not None else torch.zeros_like(sparsifier.masks.weight(name))

    def state_dict(self) -> dict[str, Any]:
        return {"ema": {n: t.detach().cpu().clone() for n, t in self.ema.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ema = {n: t.clone() for n, t in state.get("ema", {}).items()}

    def to(self, device) -> None:
        self.ema = {n: t.to(device) for n, t in self.ema.items()}
