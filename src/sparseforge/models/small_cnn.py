"""A small CNN: three 3x3 conv + BN + ReLU + max-pool stages, global pooling, linear head."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from sparseforge.models.registry import register_model


class SmallCNN(nn.Module):
    def __init__(
        self, in_chans: int, num_classes: int, channels: Sequence[int] = (32, 64, 128), batch_norm: bool = True
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_chans
        for c in channels:
            layers += [nn.Conv2d(width, c, 3, padding=1, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(c))
            # ceil_mode keeps tiny inputs (8x8 digits) from pooling down to nothing.
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
            width = c
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


@register_model("small_cnn")
def small_cnn(
    num_classes: int, in_chans: int, image_size: int, channels: Sequence[int] = (32, 64, 128), batch_norm: bool = True
):
    return SmallCNN(in_chans, num_classes, tuple(channels), batch_norm)
