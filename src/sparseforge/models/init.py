"""Weight initialisation schemes, chosen by ``model.init`` for any model (own or timm).

- ``default``: what the model's constructor did (torch's: Kaiming-uniform with a = sqrt(5), a
  uniform bias; timm models keep their own schemes);
- ``xavier``: every Linear and Conv weight Xavier-uniform with gain 1, U(-a, a) with
  a = sqrt(6 / (fan_in + fan_out)), and every bias of those layers zero. Mammoth's MNIST MLP does
  exactly this for its Linear layers (``backbone/__init__.py: xavier``);
- ``kaiming``: every Linear and Conv weight Kaiming-normal for ReLU (std sqrt(2 / fan_in)), zero bias.

Normalisation layers (BatchNorm, LayerNorm) and embeddings keep their constructor's values.
"""

from __future__ import annotations

from enum import Enum

from torch import nn

from sparseforge.errors import ConfigError

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class Init(str, Enum):
    default = "default"
    xavier = "xavier"
    kaiming = "kaiming"


def init_scheme(value: str | Init) -> Init:
    """``value`` as an :class:`Init`; an unknown name is one ConfigError line."""
    try:
        return Init(getattr(value, "value", value))
    except ValueError:
        raise ConfigError("model.init", f"unknown scheme {value!r}", ", ".join(s.value for s in Init)) from None


def initialise(model: nn.Module, scheme: str | Init = Init.default) -> nn.Module:
    """Re-initialise ``model``'s Linear and Conv layers in place by ``scheme``; returns the model."""
    scheme = init_scheme(scheme)
    if scheme is Init.default:
        return model
    for module in model.modules():
        if not isinstance(module, _LAYERS):
            continue
        if scheme is Init.xavier:
            nn.init.xavier_uniform_(module.weight, gain=1.0)
        else:
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    return model
