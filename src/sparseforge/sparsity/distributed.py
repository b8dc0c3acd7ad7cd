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


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def comm_device() -> torch.device:
    """Where collectives need their tensors: the current GPU for NCCL, the CPU otherwise.

    Masks may still be on the CPU when they are first synchronised (the trainer moves the
    model to its GPU after ``setup``), so every collective here goes through this device.
    """
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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


def all_ranks_agree(flag: bool) -> bool:
    """True only if ``flag`` is True on every rank (so all ranks take the same branch)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], device=comm_device(), dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """``tensor`` from every rank, in rank order (on the CPU)."""
    if world_size() == 1:
        return [tensor]
    local = tensor.to(comm_device()).contiguous()
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local)
    return [p.cpu() for p in parts]
