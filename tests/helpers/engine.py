"""A hand-written training loop around the sparsity engine, as a user writes it without Lightning."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def sparse_step(forward: Callable, optimizer, sparsifier, x: torch.Tensor, y: torch.Tensor) -> dict | None:
    """One optimizer step with the engine's two calls around it; the update's stats, if it ran one."""
    optimizer.zero_grad()
    F.cross_entropy(forward(x), y).backward()
    sparsifier.before_optimizer_step()
    optimizer.step()
    return sparsifier.after_optimizer_step()


def train_on_noise(
    forward: Callable,
    optimizer,
    sparsifier,
    steps: int,
    input_shape: Sequence[int],
    batch: int = 16,
    seed: int = 1,
    num_classes: int = 10,
) -> list[dict]:
    """``steps`` steps on Gaussian inputs with random labels (seeded); the stats of every update."""
    g = torch.Generator().manual_seed(seed)
    updates = []
    for _ in range(steps):
        x = torch.randn(batch, *input_shape, generator=g)
        y = torch.randint(0, num_classes, (batch,), generator=g)
        stats = sparse_step(forward, optimizer, sparsifier, x, y)
        if stats:
            updates.append(stats)
    return updates
