"""``dense`` executor: the dense kernels on a compressed layer (the masked path's arithmetic).

The dense weight is materialised from the active values for each forward (one scatter), the
matmul or convolution is PyTorch's dense one, and the weight gradient is gathered back at the
active positions. It is what ``auto`` picks where sparse kernels lose (low sparsity, large
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
        if isinstance(layer, nn.Linear):
            return _DenseLinear.apply(x, layer.values, layer.bias, layer, layer.wants_dense_grad())
        weight = layer.plan.scatter(layer.values)
        if weight.requires_grad and layer.wants_dense_grad():
            weight.register_hook(layer.add_dense_grad)
        return layer._conv_forward(x, weight, layer.bias)


def scratch(layer, key: str, like: torch.Tensor, shape) -> torch.Tensor:
    """A dense buffer kept on the layer between steps (fresh large allocations page-fault every
    step on the CPU, which costs as much as a matmul here)."""
    buf = layer.__dict__.get(key)
    if buf is None or buf.shape != torch.Size(shape) or buf.dtype != like.dtype or buf.device != like.device:
        buf = like.new_zeros(shape)
        layer.__dict__[key] = buf
    return buf


def dense_weight(layer, values: torch.Tensor) -> torch.Tensor:
    """The layer's dense weight in a persistent buffer, rewritten only when values or plan changed.

    Outside the mask the buffer stays zero between topology updates, so refreshing it costs
    O(active weights), not O(weights).
    """
    plan = layer.plan
    key = (id(plan), values._version, values.data_ptr())
    weight = layer.__dict__.get("_dense_weight")
    if weight is None or layer.__dict__.get("_dense_weight_key") != key:
        if weight is None or layer.__dict__.get("_dense_weight_plan") is not plan or weight.dtype != values.dtype:
            weight = values.new_zeros(plan.shape)
            layer.__dict__["_dense_weight"] = weight
            layer.__dict__["_dense_weight_plan"] = plan
        weight.view(-1).index_put_((plan.idx,), values.detach())
        layer.__dict__["_dense_weight_key"] = key
    return weight


def release_buffers(layer) -> None:
    """Free the persistent dense buffers (the layer moved to a sparse kernel)."""
    for key in ("_dense_weight", "_dense_weight_key", "_dense_weight_plan", "_dense_wgrad"):
        layer.__dict__.pop(key, None)


class _DenseLinear(torch.autograd.Function):
    """F.linear on the scattered weight, with the weight gradient gathered in one step.

    The weight buffer is not saved with ``save_for_backward``: it is rewritten by the next
    forward with the same values (several forwards per step, e.g. replay), which is correct but
    would trip autograd's in-place check.
    """

    @staticmethod
    def forward(ctx, x, values, bias, layer, dense_grad):
        plan = layer.plan
        weight = dense_weight(layer, values)
        ctx.plan, ctx.layer, ctx.dense_grad, ctx.has_bias = plan, layer, dense_grad, bias is not None
        ctx.weight = weight
        ctx.save_for_backward(x)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, gy):
        (x,) = ctx.saved_tensors
        weight = ctx.weight
        gx = gvalues = gbias = None
        gy2d = gy.reshape(-1, gy.shape[-1])
        if ctx.needs_input_grad[0]:
            gx = gy @ weight
        if ctx.needs_input_grad[1]:
            dense = torch.mm(
                gy2d.t(), x.reshape(-1, x.shape[-1]), out=scratch(ctx.layer, "_dense_wgrad", gy, weight.shape)
            )
            if ctx.dense_grad:
                ctx.layer.add_dense_grad(dense)
            gvalues = ctx.plan.gather(dense)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gbias = gy2d.sum(0)
        return gx, gvalues, gbias, None, None
