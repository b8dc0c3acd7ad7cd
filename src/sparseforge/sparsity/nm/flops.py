"""FLOPs of an N:M model: layer densities fed to the engine's ``FlopsAccountant``.

The dense per-layer forward FLOPs and the per-example counting are the shared engine's
(``sparsity/flops.py``: FlopCounterMode, FLOPs = 2 x MACs, examples actually processed). This
module only says which density each sparse layer has at a schedule phase.

Training-FLOPs convention (OURS, proposed in the reference notes, not the PGF paper's, whose
formula is not published). Only the sparsified layers are scaled; with F_l the dense forward
FLOPs of sparse layer l and r = N/M while the mask is binary, per trained example:

- forward F_l * r; data gradient F_l * r (theoretical: W~^T is not N:M along its rows);
- weight gradient F_l, dense: every STE-family recipe (STE, SR-STE, MdGf, SdGf) gives the pruned
  weights a gradient;
- r = 1 during the dense warm-up and while MdGf's alpha > 0 (the decayed weights are nonzero);
- every other op: 3 x forward.

Inference: F_l * N/M ("theoretical"); on 2:4 kernels ("hardware") F_l / 2 for patterns that fit
them (2:4, 1:4, 1:8, 1:16, 1:32: they run at 2:4 speed, not at M/N), F_l otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable

from sparseforge.sparsity.nm.mask import is_2to4_pattern
from sparseforge.sparsity.nm.schedule import Phase


def forward_density(phase: Phase) -> float:
    """Fraction of a sparse layer's forward (and data-gradient) FLOPs spent in ``phase``."""
    return phase.n / phase.m if phase.binary else 1.0


def hardware_2to4_density(phase: Phase) -> float:
    """Fraction of a sparse layer's forward FLOPs on 2:4 sparse tensor cores."""
    return 0.5 if phase.binary and is_2to4_pattern(phase.n, phase.m) else 1.0


def step_densities(phase: Phase, layers: Iterable[str]) -> tuple[dict[str, float], dict[str, float]]:
    """(forward/data-gradient density, weight-gradient density) per layer, for ``FlopsAccountant.step``."""
    names = list(layers)
    return {name: forward_density(phase) for name in names}, {name: 1.0 for name in names}
