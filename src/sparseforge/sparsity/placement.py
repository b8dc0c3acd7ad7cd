"""Where the initial non-zeros go, with exactly the requested count per layer.

``random``: a seeded choice of exactly ``n`` positions per layer. The generator is seeded from
``(seed, layer position)`` and runs on the CPU, so every rank (and every device type) draws the
same mask. ``magnitude``: the ``n`` largest |w| of the current weights (one-shot pruning).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def seeded_generator(*key: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator whose stream depends only on ``key``: identical on every rank, stateless to resume."""
    seed = 0
    for part in key:
        seed = (seed * 1_000_003 + int(part) + 1) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(seed)


def top_n_mask(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Bool mask of the ``n`` highest scores: exactly ``n``, ties broken deterministically by topk."""
    flat = scores.flatten()
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if n > 0:
        mask[torch.topk(flat, n, sorted=False).indices] = True
    return mask.view(scores.shape)


@torch.no_grad()
def initial_masks(
    layers: Mapping[str, nn.Module], nnz: Mapping[str, int], placement: str = "random", seed: int = 0
) -> dict[str, torch.Tensor]:
    masks = {}
    for position, (name, module) in enumerate(layers.items()):
        weight = module.weight
        n = int(nnz[name])
        if placement == "random":
            chosen = torch.randperm(weight.numel(), generator=seeded_generator(seed, position))[:n]
            mask = torch.zeros(weight.numel(), dtype=torch.bool)
            mask[chosen] = True
            masks[name] = mask.view(weight.shape).to(weight.device)
        elif placement == "magnitude":
            masks[name] = top_n_mask(weight.detach().abs(), n)
        else:
            raise ValueError(f"unknown placement {placement!r}")
    return masks
