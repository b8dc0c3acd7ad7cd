"""Sparse execution backends: make a masked model's sparsity pay in wall-clock time on the CPU.

``sparsity.backend`` = ``masked`` (default: dense tensors, masks applied; every device) |
``csr`` (torch.sparse CSR through MKL, Linear layers) | ``sparseprop`` (the SparseProp extra,
Linear and Conv2d, fp32, AVX2) | ``auto`` (per layer, the fastest of the dense and sparse kernels,
timed at the real input).

The bool masks of ``MaskSet`` stay the truth: every plan is built from a mask, rebuilt once per
topology update and after a checkpoint load. See ``layers`` (compressed parameters),
``execution`` (how a backend is hooked to the engine), ``export`` (CSR inference models).
"""

from sparseforge.sparsity.backends.execution import BACKENDS, ELEMENTWISE_OPTIMIZERS, SparseExecution
from sparseforge.sparsity.backends.layers import CompressedWeight, decompress, reference_forward
from sparseforge.sparsity.backends.plan import Plan

__all__ = [
    "BACKENDS",
    "ELEMENTWISE_OPTIMIZERS",
    "CompressedWeight",
    "Plan",
    "SparseExecution",
    "decompress",
    "reference_forward",
]
