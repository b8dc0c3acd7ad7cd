"""``dense`` executor: the dense kernels on a compressed layer (the masked path's arithmetic).

The dense weight is materialised from the active values for each forward (one scatter), the
matmul or convolution is PyTorch's dense one, and autograd gathers the weight gradient back at
the active positions. It is what ``auto`` picks where sparse kernels lose (low sparsity, large
batches, GPUs): the optimizer still runs on the active values only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DenseExecutor:
    name = "dense"

    def unsupported(self, layer: nn.Module) -> str | None:
        return None

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor:
        weight = layer.plan.scatter(layer.values)
        if weight.requires_grad and layer.wants_dense_grad():
            weight.register_hook(layer.add_dense_grad)
        if isinstance(layer, nn.Linear):
            return F.linear(x, weight, layer.bias)
        return layer._conv_forward(x, weight, layer.bias)
