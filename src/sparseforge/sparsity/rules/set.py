"""``set`` (Mocanu et al., 2018): drop the smallest magnitudes, grow uniformly at random.

Random scores come from a generator seeded by (seed, update index, layer position) on the
weight's device, so every rank draws the same choice and a resumed run draws the same again.
As RigL's SET baseline (``SparseSETOptimizer``) and the RigL paper's Algorithm 1, grow candidates
are all weights inactive after the drop (``regrow_dropped=false``: inactive before the update).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparseforge.sparsity.rules.base import RULES, DropAndGrow
from sparseforge.utils.seeding import seeded_generator


def random_scores(sparsifier, name: str, position: int) -> torch.Tensor:
    weight = sparsifier.masks.weight(name)
    g = seeded_generator(sparsifier.seed, sparsifier.updates_done, position, device=weight.device)
    return torch.rand(weight.shape, generator=g, device=weight.device)


@RULES.register("set")
class SET(DropAndGrow):
    @dataclass
    class Options(DropAndGrow.Options):
        #: RigL's SET baseline: every weight inactive after the drop (false: inactive before it).
        regrow_dropped: bool = True

    def grow_scores(self, sparsifier, name, position, dense_grad):
        return random_scores(sparsifier, name, position)
