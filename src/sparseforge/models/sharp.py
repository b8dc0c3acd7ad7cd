"""The SHARP networks (Gurbuz, Moorman, Dovrolis, 2023): MNISTLIKE and VGG_Small.

Blocks, in forward order (every weight layer is followed by a ReLU, some by a 2x2 max-pool):

- ``conv_early``: convolutions whose output is the **replay cut-off** (activations stored in
  the short-term memory are taken here, and replayed activations enter here);
- ``conv_late``: convolutions above the cut-off (empty for MNISTLIKE);
- ``hidden``: linear layers;
- ``penultimate``: the last linear layer; its ReLU output times ``unit_mask`` (0 for idle units,
  in forward and backward) is the representation the kNN classifier uses.

The network has no classifier in the paper. ``head`` is an extra linear layer for the
linear-head prediction option (SHARP trains it on detached representations, so it never shapes
the representation); it also lets other methods (finetune, ER) train the same architecture
with cross-entropy, since ``forward`` returns ``head(representation)``.

Convolutions are 3x3, stride 1, padding 1; weights Kaiming-normal (fan_in), biases 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sparseforge.models.registry import register_model


@dataclass(frozen=True)
class WeightLayer:
    """One weight layer of the unit graph: its input units are the previous layer's outputs."""

    name: str
    module: nn.Module
    early: bool  # at or below the replay cut-off
    pool: bool  # 2x2 max-pool after its ReLU
    in_group: int  # input features per unit of the previous layer (H*W at the flatten, else 1)

    @property
    def is_conv(self) -> bool:
        return isinstance(self.module, nn.Conv2d)


class SharpNet(nn.Module):
    def __init__(
        self,
        in_chans: int,
        image_size: int,
        num_classes: int,
        early: Sequence[tuple[int, bool]],
        late: Sequence[tuple[int, bool]] = (),
        hidden: Sequence[int] = (),
        representation: int = 500,
    ):
        super().__init__()
        self.conv_early = nn.ModuleList()
        self.conv_late = nn.ModuleList()
        self.hidden = nn.ModuleList()
        pools: list[bool] = []
        channels, size = in_chans, image_size
        for block, spec in ((self.conv_early, early), (self.conv_late, late)):
            for out, pool in spec:
                block.append(nn.Conv2d(channels, out, 3, padding=1))
                pools.append(bool(pool))
                channels, size = out, size // 2 if pool else size
        self.cutoff_shape = self._shape_after(in_chans, image_size, early)
        features, spatial = channels * size * size, size * size
        for width in hidden:
            self.hidden.append(nn.Linear(features, width))
            features = width
        self.penultimate = nn.Linear(features, representation)
        self.head = nn.Linear(representation, num_classes)
        self.register_buffer("unit_mask", torch.ones(representation))
        self.representation_dim = representation
        self._pools = pools + [False] * (len(self.hidden) + 1)
        self._flatten_spatial = spatial
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _shape_after(in_chans: int, size: int, spec: Sequence[tuple[int, bool]]) -> tuple[int, ...]:
        channels = in_chans
        for out, pool in spec:
            channels, size = out, size // 2 if pool else size
        return (channels, size, size)

    # -- the unit graph -------------------------------------------------------------------------------
    def weight_layers(self) -> list[WeightLayer]:
        """Every masked layer in forward order (the head is not part of the graph)."""
        named = [(f"conv_early.{i}", m, True) for i, m in enumerate(self.conv_early)]
        named += [(f"conv_late.{i}", m, False) for i, m in enumerate(self.conv_late)]
        named += [(f"hidden.{i}", m, False) for i, m in enumerate(self.hidden)]
        named.append(("penultimate", self.penultimate, False))
        n_convs = len(self.conv_early) + len(self.conv_late)
        return [
            WeightLayer(name, m, early, self._pools[k], self._flatten_spatial if k == n_convs and n_convs else 1)
            for k, (name, m, early) in enumerate(named)
        ]

    # -- forward paths -------------------------------------------------------------------------------
    def _stages(self):
        convs = [*self.conv_early, *self.conv_late]
        yield from ((m, self._pools[i]) for i, m in enumerate(convs))
        yield from ((m, False) for m in [*self.hidden, self.penultimate])

    def _run(self, x: torch.Tensor, start: int, record: list | None = None) -> torch.Tensor:
        for module, pool in list(self._stages())[start:]:
            if isinstance(module, nn.Linear) and x.dim() > 2:
                x = x.flatten(1)
            x = F.relu(module(x))
            if record is not None:
                record.append(x)  # post-ReLU, before pooling: what unit selection scores
            if pool:
                x = F.max_pool2d(x, 2)
        return x * self.unit_mask

    def cutoff(self, x: torch.Tensor) -> torch.Tensor:
        """Activations at the replay cut-off (output of ``conv_early``)."""
        for module, pool in list(self._stages())[: len(self.conv_early)]:
            x = F.relu(module(x))
            if pool:
                x = F.max_pool2d(x, 2)
        return x

    def represent_from_cutoff(self, a: torch.Tensor) -> torch.Tensor:
        """The masked representation of cut-off activations (replay enters here)."""
        return self._run(a, len(self.conv_early))

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, 0)

    def layer_activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Post-ReLU (pre-pool, pre idle mask) activation of every weight layer, in order."""
        record: list[torch.Tensor] = []
        self._run(x, 0, record)
        return record

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.represent(x))


@register_model("sharp_mnistlike")
def sharp_mnistlike(
    num_classes: int, in_chans: int = 1, image_size: int = 28, representation: int = 500, hidden: Sequence[int] = (500,)
):
    """MNISTLIKE: conv 16 + pool, conv 16 + pool (cut-off: 16x7x7 = 784), 784-500-500."""
    return SharpNet(
        in_chans, image_size, num_classes, early=[(16, True), (16, True)], hidden=hidden, representation=representation
    )


@register_model("sharp_vgg_small")
def sharp_vgg_small(
    num_classes: int,
    in_chans: int = 3,
    image_size: int = 32,
    representation: int = 1024,
    hidden: Sequence[int] = (1024,),
):
    """VGG_Small: 64, 64+pool, 64, 64+pool (cut-off: 64x8x8 = 4096), 128, 128, 128+pool, 2048-1024-1024."""
    return SharpNet(
        in_chans,
        image_size,
        num_classes,
        early=[(64, False), (64, True), (64, False), (64, True)],
        late=[(128, False), (128, False), (128, True)],
        hidden=hidden,
        representation=representation,
    )
