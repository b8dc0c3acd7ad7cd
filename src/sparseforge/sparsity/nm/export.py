"""Export a trained N:M model: hard masks baked into plain weights, then real 2:4 tensors on a GPU.

Two steps, because semi-structured tensors exist only on CUDA:

1. :func:`export_state` (any device): a plain state dict in which every sparse weight is
   ``w * mask``, the mask recomputed from the final |w| with the binary rule (alpha = 0, never
   MdGf's soft mask; :func:`bake_` does the same in place on a model). It comes with the boolean masks
   (ASP's ``weight_mma_mask`` idea, kept beside the state dict so the state dict loads into the
   unmodified architecture) and the patterns; the NMSparsityCallback writes it as ``nm_export.pt``.
2. :func:`to_semi_structured` (CUDA, compute capability >= 8.0, fp16/bf16): replaces each eligible
   ``nn.Linear`` weight by ``torch.sparse.to_sparse_semi_structured(weight)``; ``F.linear`` then
   dispatches to the cuSPARSELt (or CUTLASS) sparse kernels. Eligible: 2-D, the tensor itself is
   2:4 along ``in_features`` (true for 2:4, 1:4, 1:8, 1:16, 1:32 masks), both dimensions multiples
   of the backend's minimum tile. Convolutions have no semi-structured path in PyTorch: their
   masks are exported (C-innermost, ASP layout) for TensorRT/cuDNN tooling but stay dense here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparseforge.sparsity.nm.mask import nm_mask, satisfies_2to4
from sparseforge.sparsity.nm.sparsifier import nm_layers, nm_parametrization

EXPORT_FORMAT = "sparseforge-nm-v1"
SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16)
# Minimum (rows, cols) tile of the sparse operand, per backend, for fp16/bf16, as in
# torch/sparse/semi_structured.py; read from torch at run time when the classes are present.
_FALLBACK_TILES = {"cusparselt": (16, 16), "cutlass": (32, 64)}


@torch.no_grad()
def hard_masks(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """({layer: binary mask}, {layer: "N:M"}) of every N:M layer, at its current hard phase."""
    masks, patterns = {}, {}
    for name, layer in nm_layers(model).items():
        nm = nm_parametrization(layer)
        phase = nm.phase(hard=True)
        dense = layer.parametrizations.weight.original
        masks[name] = (
            torch.ones_like(dense, dtype=torch.bool) if phase.dense else nm_mask(dense, phase.n, phase.m, nm.group_dim)
        )
        patterns[name] = phase.pattern
    return masks, patterns


@torch.no_grad()
def bake_(model: nn.Module) -> dict[str, torch.Tensor]:
    """IN PLACE: remove the N:M parametrizations, leaving ``w * mask`` as plain weights; returns the masks.

    In place on purpose: ``torch.nn.utils.parametrize`` shares one injected class between a module
    and its deep copies, so removing the parametrization from a copy breaks the original. To
    export without touching a model, use :func:`export_state`.
    """
    masks, _ = hard_masks(model)
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        parametrize.remove_parametrizations(modules[name], "weight", leave_parametrized=False)
        modules[name].weight.mul_(mask)
    return masks


@torch.no_grad()
def export_state(model: nn.Module, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """A plain state dict (hard-masked weights under ``<layer>.weight``), the masks and the patterns.

    The state dict loads into the architecture without parametrizations (``load_export``); the
    model itself is not modified.
    """
    masks, patterns = hard_masks(model)
    state = {}
    for key, value in model.state_dict().items():
        layer, sep, rest = key.partition(".parametrizations.weight.")
        if sep and layer in masks:
            if rest == "original":
                state[f"{layer}.weight"] = (value * masks[layer]).detach().cpu()
            continue  # the schedule buffers belong to the training-time parametrization
        state[key] = value.detach().cpu()
    return {
        "format": EXPORT_FORMAT,
        "state_dict": state,
        "masks": {name: m.cpu() for name, m in masks.items()},
        "patterns": patterns,
        "meta": dict(meta or {}),
    }


def load_export(state: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Load an :func:`export_state` dict into a plain model of the same architecture; returns the masks."""
    if state.get("format") != EXPORT_FORMAT:
        raise ValueError(f"not an N:M export (format {state.get('format')!r}, expected {EXPORT_FORMAT!r})")
    model.load_state_dict(state["state_dict"])
    modules = dict(model.named_modules())
    for name, mask in state["masks"].items():
        weight = modules[name].weight
        if bool((weight[~mask.to(weight.device)] != 0).any()):
            raise ValueError(f"exported weight of {name} has nonzeros outside its mask")
    return state["masks"]


# -- real 2:4 tensors ------------------------------------------------------------------------------
def semi_structured_unsupported_reason(device: torch.device | str | None = None) -> str | None:
    """Why ``to_sparse_semi_structured`` cannot run here, or None if it can."""
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return f"this PyTorch ({torch.__version__}) has no torch.sparse.to_sparse_semi_structured (needs >= 2.1)"
    if not torch.cuda.is_available():
        return "no CUDA GPU: semi-structured (2:4) sparse tensors need an NVIDIA GPU of compute capability >= 8.0"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"GPU compute capability {major}.{minor} < 8.0: 2:4 sparse tensor cores need Ampere or newer"
    return None


def default_backend() -> str:
    """cuSPARSELt where PyTorch was built with it, else CUTLASS."""
    cusparselt = getattr(torch.backends, "cusparselt", None)
    return "cusparselt" if cusparselt is not None and cusparselt.is_available() else "cutlass"


def min_tile(dtype: torch.dtype, backend: str) -> tuple[int, int]:
    """Minimum (rows, cols) of a sparse weight, both dimensions must be multiples of it."""
    cls_name = {"cusparselt": "SparseSemiStructuredTensorCUSPARSELT", "cutlass": "SparseSemiStructuredTensorCUTLASS"}
    cls = getattr(torch.sparse, cls_name[backend], None)
    table = getattr(cls, "_DTYPE_SHAPE_CONSTRAINTS", {}) if cls is not None else {}
    if dtype in table:
        return table[dtype].sparse_min_rows, table[dtype].sparse_min_cols
    return _FALLBACK_TILES[backend]


def ineligible_reason(layer: nn.Module, weight: torch.Tensor, dtype: torch.dtype, backend: str) -> str | None:
    """Why this layer's weight cannot become a semi-structured tensor, or None if it can."""
    if not isinstance(layer, nn.Linear):
        return (
            f"{type(layer).__name__}: PyTorch has no semi-structured path for convolutions (mask exported for TensorRT)"
        )
    if dtype not in SEMI_STRUCTURED_DTYPES:
        return f"dtype {dtype} (2:4 needs float16 or bfloat16; float32 would mean 1:2)"
    if not satisfies_2to4(weight):
        return "the weight is not 2:4 along in_features (pattern with more than 2 nonzeros in an aligned group of 4)"
    rows, cols = min_tile(dtype, backend)
    out_f, in_f = weight.shape
    if out_f % rows or in_f % cols:
        return f"shape {out_f}x{in_f} is not a multiple of the {backend} {dtype} tile {rows}x{cols}"
    return None


@torch.no_grad()
def to_semi_structured(model: nn.Module, layer_names, backend: str | None = None) -> dict[str, str]:
    """Replace the named Linear weights of a baked model (on CUDA, fp16/bf16) by 2:4 sparse tensors.

    Returns {layer: "converted" or the reason it stayed dense}. Raises RuntimeError where no
    2:4 tensor can exist (CPU, old GPU): the caller prints that one line.
    """
    reason = semi_structured_unsupported_reason()
    if reason:
        raise RuntimeError(reason)
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    backend = backend or default_backend()
    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
    modules = dict(model.named_modules())
    report = {}
    for name in layer_names:
        layer = modules[name]
        weight = layer.weight.detach()
        why = ineligible_reason(layer, weight, weight.dtype, backend)
        if why is None and not weight.is_cuda:
            why = "weight is not on a CUDA device"
        if why:
            report[name] = why
            continue
        layer.weight = nn.Parameter(to_sparse_semi_structured(weight.contiguous()), requires_grad=False)
        report[name] = "converted"
    return report
