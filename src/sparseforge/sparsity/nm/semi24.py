"""``semi24`` executor: N:M Linear layers compute their forward through a 2:4 semi-structured tensor.

For training on a GPU (Ampere or newer, fp16/bf16): the effective weight of an N:M layer (its
parametrization's output, ``w * mask``) is converted with ``torch.sparse.to_sparse_semi_structured``
once per optimizer step (keyed on the weight's version, like the mask itself), and the forward
``x @ W^T`` runs on the sparse tensor cores. The pattern is **this framework's N:M mask**: the
effective weight is zero outside it, and any mask that is also 2:4 along ``in_features`` (2:4,
1:4, 1:8, 1:16, 1:32, 2:8 ...) compresses without loss; other patterns are refused (torchao's
``SemiSparseLinear`` would pick a 2:4 pattern of its own instead).

Backward stays dense by design: the input gradient needs ``W`` transposed (2:4 along
``out_features``, which N:M masks do not guarantee), and STE/SR-STE need the weight gradient at
pruned positions too. So the gain is the forward GEMM only (published: ~1.1-1.3x per large GEMM
on A100/H100, a few percent end to end).

On a CPU this module only checks eligibility (:func:`semi24_unsupported_reason`); ``install``
refuses with that reason.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparseforge.sparsity.nm.export import (
    SEMI_STRUCTURED_DTYPES,
    default_backend,
    min_tile,
    semi_structured_unsupported_reason,
)
from sparseforge.sparsity.nm.mask import satisfies_2to4
from sparseforge.sparsity.nm.sparsifier import dense_weight, nm_parametrization


def semi24_unsupported_reason(layer: nn.Module, dtype: torch.dtype, backend: str | None = None) -> str | None:
    """Why this N:M layer cannot run its forward on 2:4 tensors in ``dtype`` (None: it can).

    Device-independent checks (layer type, pattern, dtype, tile shape) come first, so that a CPU
    can validate a model before it goes to a GPU.
    """
    if not isinstance(layer, nn.Linear):
        return f"{type(layer).__name__}: 2:4 tensors serve Linear layers only"
    param = nm_parametrization(layer)
    if param is None:
        return "not an N:M layer"
    phase = param.phase(hard=True)
    if phase.dense:
        return "the layer is in its dense phase"
    mask = param.mask(dense_weight(layer), phase.n, phase.m)[0]
    if not satisfies_2to4(mask):
        return f"the {phase.pattern} mask is not 2:4 along in_features"
    if dtype not in SEMI_STRUCTURED_DTYPES:
        return f"dtype {dtype}: 2:4 tensors need float16 or bfloat16"
    backend = backend or default_backend()
    rows, cols = min_tile(dtype, backend)
    out_f, in_f = layer.out_features, layer.in_features
    if out_f % rows or in_f % cols:
        return f"shape {out_f}x{in_f} is not a multiple of the {backend} {dtype} tile {rows}x{cols}"
    return None


class _Semi24Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, sparse):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        y = F.linear(x, sparse)
        return y if bias is None else y + bias

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        gx = gy @ weight if ctx.needs_input_grad[0] else None
        gw = gy.reshape(-1, gy.shape[-1]).t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        gb = gy.reshape(-1, gy.shape[-1]).sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


class Semi24Forward:
    """The forward of one N:M Linear layer through a cached 2:4 tensor of its effective weight."""

    def __init__(self, layer: nn.Linear):
        self.layer = layer
        self._key: tuple | None = None
        self._sparse = None
        self.conversions = 0

    def sparse_weight(self, weight: torch.Tensor) -> torch.Tensor:
        from torch.sparse import to_sparse_semi_structured

        master = dense_weight(self.layer)
        key = (master._version, master.data_ptr(), weight.dtype, self.layer.parametrizations.weight[0].phase(hard=True))
        if key != self._key:
            self._sparse = to_sparse_semi_structured(weight.detach().contiguous())
            self._key = key
            self.conversions += 1
        return self._sparse

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.layer.weight  # the parametrization: w * mask (autograd to the master weight)
        dtype = x.dtype if x.dtype in SEMI_STRUCTURED_DTYPES else torch.get_autocast_dtype("cuda")
        weight = weight.to(dtype)
        bias = None if self.layer.bias is None else self.layer.bias.to(dtype)
        return _Semi24Linear.apply(x.to(dtype), weight, bias, self.sparse_weight(weight))


def install(model: nn.Module, layer_names, dtype: torch.dtype = torch.float16) -> dict[str, str]:
    """Route the forward of each eligible N:M Linear layer through 2:4 tensors (CUDA only).

    Returns {layer: "semi24" or the reason it stays dense}. Raises RuntimeError where no 2:4
    tensor can exist (CPU, old GPU).
    """
    reason = semi_structured_unsupported_reason()
    if reason:
        raise RuntimeError(reason)
    from torch.sparse import SparseSemiStructuredTensor

    SparseSemiStructuredTensor._FORCE_CUTLASS = default_backend() == "cutlass"
    report = {}
    for name in layer_names:
        layer = model.get_submodule(name)
        why = semi24_unsupported_reason(layer, dtype)
        if why:
            report[name] = why
            continue
        layer.forward = Semi24Forward(layer)
        report[name] = "semi24"
    return report


def uninstall(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module.__dict__.get("forward"), Semi24Forward):
            del module.forward
