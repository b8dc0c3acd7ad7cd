"""ResNet-18 for 32x32 inputs: 3x3 stride-1 stem, no max-pool (the Mammoth / SparCL variant).

``width`` is the stem width ``nf``: 64 is the full ResNet-18 (about 11.2 M parameters);
20 is the "reduced ResNet-18" of the continual-learning papers.

``resnet18_cldst`` is the ResNet-18 of CL-with-DST's release (``models.py``): a 7x7 stride-2
stem (padding 3) without max-pool, BatchNorm with ``affine=False, track_running_stats=False``
everywhere (no BN parameters; batch statistics in training *and* evaluation, so a prediction
depends on the other images of its batch) and a classifier without bias. Its only parameters are
conv and linear weights, so a per-task mask covers the whole network.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch.nn.functional as F
from torch import nn

from sparseforge.models.registry import register_model

Norm = Callable[[int], nn.Module]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm: Norm = nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), norm(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(
        self,
        num_blocks=(2, 2, 2, 2),
        num_classes: int = 10,
        in_chans: int = 3,
        width: int = 64,
        stem_kernel: int = 3,
        stem_stride: int = 1,
        norm: Norm = nn.BatchNorm2d,
        classifier_bias: bool = True,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, stem_kernel, stride=stem_stride, padding=stem_kernel // 2, bias=False)
        self.bn1 = norm(width)
        stages, in_planes = [], width
        for i, n in enumerate(num_blocks):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride=(1 if i == 0 or j > 0 else 2), norm=norm))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(in_planes, num_classes, bias=classifier_bias)

    def features(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))


@register_model("resnet18_cifar")
def resnet18_cifar(num_classes: int, in_chans: int, image_size: int, width: int = 64):
    return ResNetCifar((2, 2, 2, 2), num_classes=num_classes, in_chans=in_chans, width=width)


@register_model("resnet18_cldst")
def resnet18_cldst(num_classes: int, in_chans: int, image_size: int, width: int = 64):
    batch_statistics_norm = partial(nn.BatchNorm2d, affine=False, track_running_stats=False)
    return ResNetCifar(
        (2, 2, 2, 2),
        num_classes=num_classes,
        in_chans=in_chans,
        width=width,
        stem_kernel=7,
        stem_stride=2,
        norm=batch_statistics_norm,
        classifier_bias=False,
    )
