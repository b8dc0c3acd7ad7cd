"""The sparsity engine. Plain PyTorch: nothing in this package imports Lightning.

- ``targets``: which conv/linear weights are sparse;
- ``distributions``: per-layer densities (uniform, ER, ERK) with exact integer counts;
- ``placement``: the initial masks (random or magnitude);
- ``masks``: ``MaskSet``, the masks as one object with state;
- ``rules``: topology update rules (static, set, rigl, unfired, momentum; SparCL's tdm);
- ``schedule``: when updates happen and how much they move;
- ``gradient_masking``: SparCL's dynamic gradient masking (a gradient policy for the sparsifier);
- ``flops``: dense FLOPs from FlopCounterMode and the training-FLOPs accountant;
- ``sparsifier``: ``Sparsifier``, the controller a training loop drives;
- ``nm``: N:M structured sparsity (SR-STE, PGF's mask- and structure-decay schedules, export).
"""

from sparseforge.sparsity.distributions import layer_densities, layer_nnz, smallest_workable_density, solve_densities
from sparseforge.sparsity.flops import FlopsAccountant, forward_flops_per_module, layer_forward_flops
from sparseforge.sparsity.gradient_masking import DynamicGradientMasking
from sparseforge.sparsity.masks import MaskInvariantError, MaskSet, reset_optimizer_state
from sparseforge.sparsity.options import SparsityOptions
from sparseforge.sparsity.sparsifier import Sparsifier
from sparseforge.sparsity.targets import prunable_layers, select_layers

__all__ = [
    "DynamicGradientMasking",
    "FlopsAccountant",
    "MaskInvariantError",
    "MaskSet",
    "Sparsifier",
    "SparsityOptions",
    "forward_flops_per_module",
    "layer_densities",
    "layer_forward_flops",
    "layer_nnz",
    "prunable_layers",
    "reset_optimizer_state",
    "select_layers",
    "smallest_workable_density",
    "solve_densities",
]
