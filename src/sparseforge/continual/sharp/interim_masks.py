"""Interim per-layer bool masks (to be replaced by the sparsity engine's mask object)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class LayerMasks:
    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = modules
        self.masks: dict[str, torch.Tensor] = {}

    def get(self, name: str) -> torch.Tensor:
        mask, weight = self.masks[name], self.modules[name].weight
        if mask.device != weight.device:
            self.masks[name] = mask = mask.to(weight.device)
        return mask

    def set(self, name: str, mask: torch.Tensor) -> None:
        weight = self.modules[name].weight
        if mask.shape != weight.shape:
            raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, weight {tuple(weight.shape)}")
        self.masks[name] = mask.to(device=weight.device, dtype=torch.bool)

    @torch.no_grad()
    def apply(self) -> None:
        for name, mask in self.masks.items():
            weight = self.modules[name].weight
            if mask.device != weight.device:
                self.masks[name] = mask = mask.to(weight.device)
            weight.mul_(mask)

    def state_dict(self) -> dict[str, Any]:
        return {name: m.cpu().clone() for name, m in self.masks.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, mask in state.items():
            self.set(name, mask)
