"""The two parts of a classifier that some continual methods use apart: the representation the
last layer reads (``embed``) and that last layer (``classifier``).

Works for the models shipped here (``features``/``represent`` + ``fc``/``head``) and for timm
models (``forward_features`` + ``forward_head(pre_logits=True)``, ``get_classifier()``).
"""

from __future__ import annotations

import torch
from torch import nn

from sparseforge.errors import ConfigError


def classifier(model: nn.Module, needed_by: str = "this method") -> nn.Linear:
    """The model's last linear layer (its classification head)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    for name in ("fc", "head"):
        if head is None and isinstance(getattr(model, name, None), nn.Linear):
            head = getattr(model, name)
    if not isinstance(head, nn.Linear):
        raise ConfigError(
            "model",
            f"{needed_by} needs a model with a separate linear classifier, {type(model).__name__} has none",
            "mlp, small_cnn, resnet18_cifar, the sharp_* networks or a timm classifier",
        )
    return head


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The flat representation the classifier reads (pre-logits features)."""
    if hasattr(model, "forward_head"):  # timm
        return model.forward_head(model.forward_features(x), pre_logits=True)
    for name in ("features", "represent"):
        if callable(getattr(model, name, None)):
            return getattr(model, name)(x).flatten(1)
    raise ConfigError("model", f"{type(model).__name__} does not expose its features (features/represent)")
