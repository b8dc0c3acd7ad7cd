"""Classifier heads that methods can swap in: the cosine-similarity classifier of ER-ACE.

``CosineLinear`` is an ``nn.Linear`` (without bias), so the sparsity engine and the FLOPs count
treat it as the linear layer it replaces; only its forward differs: the scaled cosine similarity
between the input and each class's weight row, ``scale * <x / |x|, w_c / |w_c|>``. The norms get
1e-5 added, as in the original ER-ACE code and Mammoth's ``er_ace.CustomLinear`` (scale 10).
"""

from __future__ import annotations

import torch
from torch import nn


class CosineLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, scale: float = 10.0):
        super().__init__(in_features, out_features, bias=False)
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x / (x.norm(p=2, dim=1, keepdim=True) + 1e-5)
        w = self.weight / (self.weight.norm(p=2, dim=1, keepdim=True) + 1e-5)
        return self.scale * x @ w.t()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}"


def classifier_name(model: nn.Module) -> str | None:
    """Name of the model's classifier: timm's ``get_classifier()``, else its last ``nn.Linear``
    ("" when the model itself is one); None when there is none."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        for name, module in model.named_modules():
            if module is head and isinstance(module, nn.Linear):
                return name
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return linears[-1] if linears else None


def with_cosine_classifier(model: nn.Module, scale: float = 10.0) -> nn.Module | None:
    """``model`` with its classifier replaced by a fresh ``CosineLinear`` of the same shape (the
    model itself when it is that linear layer); None when it has no linear classifier."""
    name = classifier_name(model)
    if name is None:
        return None
    old = model.get_submodule(name)
    head = CosineLinear(old.in_features, old.out_features, scale).to(old.weight.device, old.weight.dtype)
    if not name:
        return head
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, head)
    return model
