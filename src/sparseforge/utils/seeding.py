"""Stateless random streams: a generator is a function of a key, not of what ran before."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def key_seed(*key: int) -> int:
    """One seed from a key of integers."""
    seed = 0
    for part in key:
        seed = (seed * 1_000_003 + int(part) + 1) % (2**63 - 1)
    return seed


def seeded_generator(*key: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator whose stream depends only on ``key``: identical on every rank, stateless to resume."""
    return torch.Generator(device=device).manual_seed(key_seed(*key))


@contextmanager
def isolated_rng(*key: int) -> Iterator[None]:
    """Run a block on the CPU's global torch, Python and numpy RNGs seeded by ``key`` alone, and
    give them back their states after it.

    torchvision's and timm's per-image transforms draw from those global generators. Inside this
    block their draws depend only on ``key`` (say seed, epoch and batch), not on the process
    (main or loader worker) or on what ran before, and the block leaves the training RNGs as it
    found them.
    """
    seed = key_seed(*key)
    torch_state, python_state, numpy_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)
        np.random.set_state(numpy_state)
