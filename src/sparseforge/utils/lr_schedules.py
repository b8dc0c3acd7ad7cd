"""Learning-rate schedules that torch has only as compositions, as one configurable factory."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR


def warmup_cosine(
    optimizer: Optimizer, warmup: int, total: int, warmup_start_factor: float = 1e-3, eta_min: float = 0.0
) -> SequentialLR | CosineAnnealingLR:
    """Linear warm-up from ``warmup_start_factor * lr`` to ``lr`` over ``warmup`` scheduler steps,
    then cosine decay to ``eta_min`` at ``total`` (the timm/DeiT ViT recipe, in epochs by default)."""
    if not 0 <= warmup < total:
        raise ValueError(f"lr_scheduler: need 0 <= warmup < total, got warmup={warmup}, total={total}")
    if warmup == 0:
        return CosineAnnealingLR(optimizer, T_max=total, eta_min=eta_min)
    ramp = LinearLR(optimizer, start_factor=warmup_start_factor, end_factor=1.0, total_iters=warmup)
    decay = CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=eta_min)
    return SequentialLR(optimizer, [ramp, decay], milestones=[warmup])
