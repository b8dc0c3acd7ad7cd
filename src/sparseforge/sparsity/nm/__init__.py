"""N:M sparsity with progressive gradient flow (SR-STE, MdGf mask decay, SdGf structure decay).

Plain PyTorch, no Lightning: ``mask`` (N:M masks, grouping order), ``schedule`` (pure functions of
the clock), ``weight`` (the parametrization and its autograd rule), ``sparsifier`` (layer
selection and the schedule position), ``flops`` (our FLOPs convention) and ``export`` (hard-mask
baking and real 2:4 tensors). The Lightning glue is ``sparseforge.lightning.nm_sparsity``.
"""

from sparseforge.sparsity.nm.mask import group_counts, is_2to4_pattern, nm_mask, satisfies_2to4, satisfies_nm
from sparseforge.sparsity.nm.schedule import NMSchedule, Phase
from sparseforge.sparsity.nm.sparsifier import NMSparsifier, dense_weight, nm_layers, nm_parametrization
from sparseforge.sparsity.nm.weight import NMWeight

__all__ = [
    "NMSchedule",
    "NMSparsifier",
    "NMWeight",
    "Phase",
    "dense_weight",
    "group_counts",
    "is_2to4_pattern",
    "nm_layers",
    "nm_mask",
    "nm_parametrization",
    "satisfies_2to4",
    "satisfies_nm",
]
