"""Learning-rate schedules that torch has only as compositions, as one configurable factory."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR


def warmup_cosine(
    optimizer: Optimizer,
    total: int,
    warmup_fraction: float = 0.05,
    warmup_start_factor: float = 1e-3,
    eta_min: float = 0.0,
) -> SequentialLR | CosineAnnealingLR:
    """Linear warm-up from ``warmup_start_factor * lr`` to ``lr`` over ``round(warmup_fraction * total)``
    scheduler steps, then cosine decay to ``eta_min`` at ``total`` (the timm/DeiT ViT recipe).

    The warm-up is a fraction so that a shortened run (``debug=fdr``, fewer epochs) keeps the shape.
    """
    if total < 1:
        raise ValueError(f"lr_scheduler.total: must be >= 1, got {total}")
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"lr_scheduler.warmup_fraction: must be in [0, 1), got {warmup_fraction}")
    warmup = round(warmup_fraction * total)
    if warmup == 0:
        return CosineAnnealingLR(optimizer, T_max=total, eta_min=eta_min)
    ramp = LinearLR(optimizer, start_factor=warmup_start_factor, end_factor=1.0, total_iters=warmup)
    decay = CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=eta_min)
    return SequentialLR(optimizer, [ramp, decay], milestones=[warmup])
