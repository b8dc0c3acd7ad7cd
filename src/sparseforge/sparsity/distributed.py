"""Keeping masks identical on every rank (no-ops without an initialised process group).

Masks are drawn from seeded generators and computed from all-reduced gradients, so ranks agree
by construction; after every mask change rank 0's masks are broadcast anyway, so that no source
of drift (a rank-dependent seed, non-deterministic kernels) can make ranks train different
topologies. ``Sparsifier.check`` then compares per-layer fingerprints across ranks.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist

from sparseforge.utils.distributed import comm_device, world_size


def broadcast_masks(masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank 0's masks on every rank (bool tensors travel as uint8)."""
    if world_size() == 1:
        return dict(masks)
    device = comm_device()
    out = {}
    for name in sorted(masks):  # the same order on every rank
        buffer = masks[name].to(device=device, dtype=torch.uint8).contiguous()
        dist.broadcast(buffer, src=0)
        out[name] = buffer.to(device=masks[name].device, dtype=torch.bool)
    return out
