"""Stateless random streams: a generator is a function of a key, not of what ran before."""

from __future__ import annotations

import torch


def seeded_generator(*key: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator whose stream depends only on ``key``: identical on every rank, stateless to resume."""
    seed = 0
    for part in key:
        seed = (seed * 1_000_003 + int(part) + 1) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(seed)
