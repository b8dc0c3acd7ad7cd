"""``sparseprop`` executor: SparseProp's AVX2 kernels (Nikdan et al., ICML 2023), an optional extra.

    pip install pybind11 && pip install --no-build-isolation sparseprop      # or: pip install -e ".[sparseprop]"

It builds from source with g++ (``-march=native``: build it on the machine that runs it), works
in fp32 on AVX2 CPUs, and convolves with stride 1 or 2 only. Its fused backward gives the input
gradient and the gradient of the active weights in one pass.

Only SparseProp's kernels are used: the index structure comes from this framework's plan (the
mask), never from the package's ``from_dense``, which builds it from the nonzero values and would
drop weights grown at exactly 0.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

INSTALL_HINT = (
    'pip install pybind11 && pip install --no-build-isolation sparseprop (or pip install -e ".[sparseprop]"; needs g++)'
)


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """Why SparseProp cannot run here, or None."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        return f"SparseProp needs an AVX2 CPU (this one reports {capability})"
    try:
        from sparseprop import backend  # noqa: F401
    except ImportError as exc:
        return f"the sparseprop package is not installed ({exc}): {INSTALL_HINT}"
    return None


def _kernels():
    from sparseprop import backend

    return backend


class SparsePropExecutor:
    name = "sparseprop"

    def unsupported(self, layer: nn.Module) -> str | None:
        reason = unavailable_reason()
        if reason:
            return reason
        if isinstance(layer, nn.Linear):
            return None
        if isinstance(layer, nn.Conv2d):
            return conv_unsupported(layer)
        return f"{type(layer).__name__}: SparseProp has Linear and Conv2d kernels only"

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor:
        if layer.values.dtype != torch.float32:
            raise RuntimeError(f"sparsity.backend=sparseprop: kernels are fp32 only, weights are {layer.values.dtype}")
        x = x.to(torch.float32)
        dense_grad = layer.wants_dense_grad()
        if isinstance(layer, nn.Linear):
            shape = x.shape
            y = _SparsePropLinear.apply(x.reshape(-1, shape[-1]), layer.values, layer.bias, layer, dense_grad)
            return y.reshape(*shape[:-1], y.shape[-1])
        return _SparsePropConv.apply(x, layer.values, layer.bias, layer, dense_grad)


def conv_unsupported(conv: nn.Conv2d) -> str | None:
    k = conv.kernel_size
    if conv.groups != 1 or conv.dilation != (1, 1):
        return "SparseProp convolutions have no groups or dilation"
    if k[0] != k[1] or conv.stride[0] != conv.stride[1] or conv.stride[0] not in (1, 2):
        return f"SparseProp convolutions need a square kernel and stride 1 or 2 (got {k}, stride {conv.stride})"
    if isinstance(conv.padding, str) or conv.padding[0] != conv.padding[1] or conv.padding_mode != "zeros":
        return f"SparseProp convolutions need equal zero padding (got {conv.padding}, {conv.padding_mode})"
    if k[0] > 255:
        return "kernel larger than 255"
    return None


def _pad_batch(t: torch.Tensor) -> torch.Tensor:
    """Zero-pad the batch to a multiple of 8: SparseProp 0.1.14's batch-vectorised conv kernels
    skip the batch remainder (wrong outputs for, e.g., batch 5); zero rows change no gradient."""
    extra = -t.shape[0] % 8
    return torch.cat([t, t.new_zeros(extra, *t.shape[1:])]) if extra else t


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous()


class _SparsePropLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d, values, bias, layer, dense_grad):
        plan = layer.plan
        crow, col = plan.csr()
        x_t = _f32(x2d.t())  # (in, B): the kernels vectorise over the batch
        out = torch.zeros(plan.shape[0], x2d.shape[0])
        _kernels().sparse_linear_vectorized_forward(x_t, crow, col, _f32(values), out)
        y = out.t()
        if bias is not None:
            y = y + bias
        ctx.plan, ctx.layer, ctx.dense_grad, ctx.has_bias = plan, layer, dense_grad, bias is not None
        ctx.save_for_backward(x_t, values)
        return y

    @staticmethod
    def backward(ctx, gy):
        x_t, values = ctx.saved_tensors
        plan = ctx.plan
        crow, col = plan.csr()
        gx_t = torch.zeros_like(x_t)
        gvalues = torch.zeros(plan.nnz)
        _kernels().sparse_linear_vectorized_backward(x_t, crow, col, _f32(values), _f32(gy.t()), gx_t, gvalues)
        if ctx.dense_grad and ctx.needs_input_grad[1]:
            ctx.layer.add_dense_grad(gy.t() @ x_t.t(), owned=True)
        gbias = gy.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx_t.t(), gvalues, gbias, None, None


class _SparsePropConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, values, bias, layer, dense_grad):
        plan = layer.plan
        k, stride, padding = layer.kernel_size[0], layer.stride[0], layer.padding[0]
        batch = x.shape[0]
        x = _pad_batch(x)
        b, _, h, w = x.shape
        oh = math.floor((h + 2 * padding - k) / stride) + 1
        ow = math.floor((w + 2 * padding - k) / stride) + 1
        x_perm = _f32(x.permute(1, 2, 3, 0))  # (IC, H, W, B): vectorised over the batch
        out = torch.zeros(plan.shape[0], oh, ow, b)
        forward = _kernels().sparse_conv2d_vectorized_forward_stride_1 if stride == 1 else None
        forward = forward or _kernels().sparse_conv2d_vectorized_forward_stride_2
        forward(x_perm, *plan.conv_oc_ic_xy(), _f32(values), out, k, padding)
        y = out.permute(3, 0, 1, 2)[:batch]
        if bias is not None:
            y = y + bias.view(1, -1, 1, 1)
        ctx.plan, ctx.layer, ctx.dense_grad, ctx.has_bias = plan, layer, dense_grad, bias is not None
        ctx.geometry = (k, stride, padding)
        ctx.save_for_backward(x_perm, values)
        return y

    @staticmethod
    def backward(ctx, gy):
        x_perm, values = ctx.saved_tensors
        plan = ctx.plan
        k, stride, padding = ctx.geometry
        gx_perm = torch.zeros_like(x_perm)
        gvalues = torch.zeros(plan.nnz)
        backward = (
            _kernels().sparse_conv2d_vectorized_backward_stride_1
            if stride == 1
            else _kernels().sparse_conv2d_vectorized_backward_stride_2
        )
        batch = gy.shape[0]
        gy_perm = _f32(_pad_batch(gy).permute(1, 2, 3, 0))
        backward(x_perm, *plan.conv_oc_ic_xy(), _f32(values), gy_perm, gx_perm, gvalues, k, padding)
        if ctx.dense_grad and ctx.needs_input_grad[1]:
            x = x_perm.permute(3, 0, 1, 2)[:batch]
            dense = torch.nn.grad.conv2d_weight(x, plan.shape, gy, stride=stride, padding=padding)
            ctx.layer.add_dense_grad(dense, owned=True)
        gbias = gy.sum(dim=(0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx_perm.permute(3, 0, 1, 2)[:batch], gvalues, gbias, None, None
