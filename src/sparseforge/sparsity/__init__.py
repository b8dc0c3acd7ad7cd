"""The sparsity engine. Plain PyTorch: nothing in this package imports Lightning."""

from sparseforge.sparsity.flops import forward_flops_per_module, layer_forward_flops
from sparseforge.sparsity.targets import prunable_layers, select_layers

__all__ = ["forward_flops_per_module", "layer_forward_flops", "prunable_layers", "select_layers"]
