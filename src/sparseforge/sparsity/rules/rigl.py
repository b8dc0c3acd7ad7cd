"""``rigl`` (Evci et al., 2020): drop the smallest magnitudes, grow the largest |dense gradient|.

The dense gradient is that of the update step's mini-batch with respect to the (masked)
weights, read before the gradients are masked; under DDP it is the all-reduced gradient.
Grow candidates are all weights inactive after the drop (Algorithm 1; google-research/rigl
``sparse_optimizers_base.py: _get_update_op``): a weight dropped and regrown in the same update
keeps its value. ``regrow_dropped=false`` restricts growth to weights inactive before the update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparseforge.sparsity.rules.base import RULES, DropAndGrow


@RULES.register("rigl")
class RigL(DropAndGrow):
    needs_dense_grad = True

    @dataclass
    class Options(DropAndGrow.Options):
        #: RigL's candidates: every weight inactive after the drop (false: inactive before it).
        regrow_dropped: bool = True

    def grow_scores(self, sparsifier, name, position, dense_grad):
        if dense_grad is None:  # the layer took no part in this step's loss
            return torch.zeros_like(sparsifier.masks.weight(name))
        grad = dense_grad.detach()
        # a compressed layer's dense gradient is this step's scratch: score it in place (no second
        # weight-sized tensor at the update); a masked layer's .grad is the optimizer's, so copy
        return grad.abs_() if sparsifier.masks.grad_is_scratch(name, dense_grad) else grad.abs()
