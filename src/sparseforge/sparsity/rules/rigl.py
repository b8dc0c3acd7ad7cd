"""``rigl`` (Evci et al., 2020): drop the smallest magnitudes, grow the largest |dense gradient|.

The dense gradient is that of the update step's mini-batch with respect to the (masked)
weights, read before the gradients are masked; under DDP it is the all-reduced gradient.
"""

from __future__ import annotations

import torch

from sparseforge.sparsity.rules.base import RULES, DropAndGrow


@RULES.register("rigl")
class RigL(DropAndGrow):
    needs_dense_grad = True

    def grow_scores(self, sparsifier, name, position, dense_grad):
        if dense_grad is None:  # the layer took no part in this step's loss
            return torch.zeros_like(sparsifier.masks.weight(name))
        return dense_grad.detach().abs()
