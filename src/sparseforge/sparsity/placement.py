"""Where the initial non-zeros go, with exactly the requested count per layer.

``random``: a seeded choice of exactly ``n`` positions per layer. The generator is seeded from
``(seed, layer position)`` and runs on the CPU, so every rank (and every device type) draws the
same mask. ``magnitude``: the ``n`` largest |w| of the current weights (one-shot pruning).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from sparseforge.utils.seeding import seeded_generator

# topk on the CPU works on a (value, int64 index) copy of its whole input: 12 bytes per score.
# Above this size, candidates are picked chunk by chunk, so an update's peak memory stays small.
TOPK_CHUNK = 1 << 18


def top_n_indices(scores: torch.Tensor, n: int, largest: bool = True) -> torch.Tensor:
    """Flat indices of the ``n`` highest (or lowest) scores: exactly ``n``, ties broken deterministically."""
    flat = scores.reshape(-1)
    if n <= 0:
        return torch.empty(0, dtype=torch.long, device=flat.device)
    chunks = -(-flat.numel() // TOPK_CHUNK)
    if flat.numel() <= TOPK_CHUNK:
        return torch.topk(flat, n, largest=largest, sorted=False).indices
    if n * chunks > flat.numel() // 2:
        # Chunking would keep most entries as candidates (no memory saved, twice as slow):
        # pre-select by a threshold read off a strided sample instead.
        return _top_n_by_threshold(flat, n, largest)
    # The overall top n lie among each chunk's top min(n, chunk) (exact, not an approximation).
    # Each chunk's winners are written straight into one candidate buffer (no per-chunk tensors
    # and no concatenated copy: near the route switch the candidates are half the layer).
    sizes = [min(n, min(TOPK_CHUNK, flat.numel() - start)) for start in range(0, flat.numel(), TOPK_CHUNK)]
    values = torch.empty(sum(sizes), dtype=flat.dtype, device=flat.device)
    candidates = torch.empty(sum(sizes), dtype=torch.long, device=flat.device)
    offset = 0
    for start, k in zip(range(0, flat.numel(), TOPK_CHUNK), sizes, strict=True):
        chunk = flat[start : start + TOPK_CHUNK]
        torch.topk(
            chunk, k, largest=largest, sorted=False, out=(values[offset : offset + k], candidates[offset : offset + k])
        )
        candidates[offset : offset + k].add_(start)
        offset += k
    return candidates[torch.topk(values, n, largest=largest, sorted=False).indices]


SAMPLE = 1 << 16  # scores read to place the pre-selection threshold
MARGIN = 1.25  # the threshold aims at this many times n candidates


def _top_n_by_threshold(flat: torch.Tensor, n: int, largest: bool) -> torch.Tensor:
    """Exact top ``n`` for large ``n``: keep the scores beyond a threshold that at least ``n``
    pass, then one topk among those (a quarter or so of the tensor, not all of it).

    The threshold is an order statistic of a strided sample (no randomness: every rank picks the
    same). If fewer than ``n`` scores pass it (an unlucky sample), one topk over everything.
    """
    numel = flat.numel()
    sample = flat[:: max(1, numel // SAMPLE)]
    rank = min(sample.numel(), max(1, int(sample.numel() * MARGIN * n / numel) + 1))
    threshold = torch.topk(sample, rank, largest=largest, sorted=False).values
    threshold = threshold.min() if largest else threshold.max()
    candidates = (flat >= threshold if largest else flat <= threshold).nonzero().squeeze(1)
    if candidates.numel() < n:
        return torch.topk(flat, n, largest=largest, sorted=False).indices
    return candidates[torch.topk(flat[candidates], n, largest=largest, sorted=False).indices]


def top_n_mask(scores: torch.Tensor, n: int, largest: bool = True) -> torch.Tensor:
    """Bool mask of the ``n`` highest (or lowest) scores: exactly ``n``, ties broken deterministically."""
    return indices_to_mask(top_n_indices(scores, n, largest), scores.shape, scores.device)


def indices_to_mask(indices: torch.Tensor, shape, device) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool, device=device)
    mask.view(-1)[indices] = True
    return mask


@torch.no_grad()
def initial_masks(
    layers: Mapping[str, nn.Module], nnz: Mapping[str, int], placement: str = "random", seed: int = 0
) -> dict[str, torch.Tensor]:
    masks = {}
    for position, (name, module) in enumerate(layers.items()):
        weight = module.weight
        n = int(nnz[name])
        if placement == "random":
            # int32 where it fits: the same permutation (the draw does not depend on the dtype) in
            # half the memory, the largest transient of the setup (64 MiB for a 4096x4096 layer)
            dtype = torch.int32 if weight.numel() <= torch.iinfo(torch.int32).max else torch.int64
            chosen = torch.randperm(weight.numel(), generator=seeded_generator(seed, position), dtype=dtype)[:n]
            mask = torch.zeros(weight.numel(), dtype=torch.bool)
            mask[chosen] = True
            masks[name] = mask.view(weight.shape).to(weight.device)
        elif placement == "magnitude":
            masks[name] = top_n_mask(weight.detach().abs(), n)
        else:
            raise ValueError(f"unknown placement {placement!r}")
    return masks
