"""Collectives that are no-ops without an initialised process group (plain torch.distributed).

Shared by the sparsity engine (masks), the CL methods (replay buffers) and the glue, so a
single-process run never touches ``torch.distributed``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def comm_device() -> torch.device:
    """Where collectives need their tensors: the current GPU for NCCL, the CPU otherwise.

    Masks may still be on the CPU when they are first synchronised (the trainer moves the
    model to its GPU after ``setup``), so collectives go through this device.
    """
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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


def gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor of equal shape from every rank, in rank order, on its own device."""
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place (statistics every rank computed on its own shard)."""
    if world_size() == 1:
        return tensor
    buffer = tensor.to(comm_device())
    dist.all_reduce(buffer)
    if buffer is not tensor:
        tensor.copy_(buffer)
    return tensor


@torch.no_grad()
def broadcast_(tensors) -> None:
    """Rank 0's values of ``tensors`` on every rank, in place (state a method computed on every rank
    from the global RNG, which need not agree across ranks)."""
    if world_size() == 1:
        return
    for tensor in tensors:
        buffer = tensor.detach().to(comm_device()).contiguous()
        dist.broadcast(buffer, src=0)
        tensor.copy_(buffer)
