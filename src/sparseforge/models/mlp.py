"""A plain MLP over flattened images (the models of the Split-MNIST literature)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from sparseforge.models.registry import register_model


class MLP(nn.Module):
    def __init__(
        self, in_features: int, num_classes: int, hidden_sizes: Sequence[int] = (100, 100), dropout: float = 0.0
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


@register_model("mlp")
def mlp(
    num_classes: int, in_chans: int, image_size: int, hidden_sizes: Sequence[int] = (100, 100), dropout: float = 0.0
):
    return MLP(in_chans * image_size * image_size, num_classes, tuple(hidden_sizes), dropout)
