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

# topk on the CPU works on a (value, int64 index) copy of its whole input: 12 bytes per score,
# three times the scores themselves. Above this size it only ever sees a pre-selection.
PRESELECT_ABOVE = 1 << 18
SAMPLE = 1 << 16  # scores read to place the pre-selection threshold
MARGIN = 1.25  # the threshold aims at this many times n candidates


def top_n_indices(scores: torch.Tensor, n: int, largest: bool = True) -> torch.Tensor:
    """Flat indices of the ``n`` highest (or lowest) scores: exactly ``n``. Scores tied with the
    ``n``-th go to the lowest flat indices, so the choice depends on neither the route below nor
    on how a torch version's topk orders ties.
    """
    flat = scores.reshape(-1)
    if n <= 0:
        return torch.empty(0, dtype=torch.long, device=flat.device)
    if n > flat.numel():
        raise ValueError(f"cannot pick {n} of {flat.numel()} scores")
    if bool(torch.isnan(flat.amax())):  # (amax propagates NaN) NaN ranks nowhere: a route would skip it
        raise ValueError("cannot rank scores that contain NaN")
    if flat.numel() <= PRESELECT_ABOVE:
        return _take(flat, torch.arange(flat.numel(), device=flat.device), n, largest)
    return _take(flat, _preselect(flat, n, largest), n, largest)


def _preselect(flat: torch.Tensor, n: int, largest: bool) -> torch.Tensor:
    """Indices (in increasing order) of the scores at or beyond a threshold that at least ``n``
    pass: about ``MARGIN * n`` of them, so the exact selection never works on the whole tensor.

    The threshold is an order statistic of a strided sample (no randomness: every rank picks the
    same). If fewer than ``n`` pass it (an unlucky sample), it is lowered, four times the margin
    each time; all indices are the last resort.
    """
    numel = flat.numel()
    sample = flat[:: max(1, numel // SAMPLE)]
    margin = MARGIN
    while True:
        rank = min(sample.numel(), max(1, int(sample.numel() * margin * n / numel) + 1))
        threshold = torch.topk(sample, rank, largest=largest, sorted=False).values
        threshold = threshold.min() if largest else threshold.max()
        passing = flat >= threshold if largest else flat <= threshold
        if int(torch.count_nonzero(passing)) >= n:  # (a bool sum would make an int64 copy)
            return passing.nonzero().squeeze(1)
        if rank == sample.numel():
            return torch.arange(numel, device=flat.device)
        margin *= 4


def _take(flat: torch.Tensor, candidates: torch.Tensor, n: int, largest: bool) -> torch.Tensor:
    """The ``n`` best of ``candidates`` (increasing flat indices that hold the top ``n``): all
    strictly beyond the ``n``-th score, then the lowest-index ties with it."""
    values = flat[candidates]
    nth = torch.topk(values, n, largest=largest, sorted=False).values
    nth = nth.min() if largest else nth.max()
    winners = candidates[values > nth if largest else values < nth]
    tied = candidates[values == nth]
    return torch.cat([winners, tied[: n - winners.numel()]])


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
