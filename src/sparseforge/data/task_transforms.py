"""Per-task transforms: each task of a domain-incremental stream sees the images through a fixed
transform of its own (Permuted MNIST, Rotated MNIST).

A task transform is a module ``(x, task) -> x`` over a float batch in [0, 1] (N x C x H x W) and
the task id of every example (N). It runs on the device, inside ``DeviceTransform``, after the
per-image transforms and before the batched augmentation and normalisation, so the three places
that turn raw images into inputs give an example its own task's view: a training batch (its
``Batch.task``), a replay draw (the task ids stored in the buffer) and the evaluation of task
``j`` (every example tagged ``j``). Each task's parameters are drawn once, from a generator
seeded by ``seed``, so they are fixed for the whole run and the same after a resume.

The scenario (``scenario=domain_il``, ``scenario.task_transform``) builds one with the number of
tasks, the raw image shape and the seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sparseforge.errors import ConfigError


class TaskTransform(nn.Module):
    """Base class: ``forward(x, task)``; ``x`` float N x C x H x W in [0, 1], ``task`` int N."""

    def __init__(self, n_tasks: int):
        super().__init__()
        self.n_tasks = int(n_tasks)

    def per_task(self, name: str, task: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Rows ``task`` of the per-task buffer ``name``, which moves to ``device`` once."""
        table = getattr(self, name)
        if table.device != device:
            table = table.to(device)
            setattr(self, name, table)
        task = task.to(device)
        if len(task) and (int(task.min()) < 0 or int(task.max()) >= self.n_tasks):
            raise ValueError(f"task ids must be in [0, {self.n_tasks}), got {int(task.min())}..{int(task.max())}")
        return table[task]


class PixelPermutation(TaskTransform):
    """A fixed random permutation of the pixels per task (Permuted MNIST; Mammoth's
    ``Permutation`` of the flattened ``ToTensor`` image, C x H x W values)."""

    def __init__(self, n_tasks: int, image_shape: Sequence[int], seed: int = 0):
        super().__init__(n_tasks)
        self.image_shape = tuple(int(s) for s in image_shape)
        size = math.prod(self.image_shape)
        g = torch.Generator().manual_seed(int(seed))
        perms = torch.stack([torch.randperm(size, generator=g) for _ in range(self.n_tasks)])
        self.register_buffer("permutations", perms, persistent=False)  # n_tasks x (C*H*W)

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"the permutations are of {self.image_shape} images, got {tuple(x.shape[1:])}")
        order = self.per_task("permutations", task, x.device)  # N x (C*H*W): one gather for the batch
        return x.flatten(1).gather(1, order).view_as(x)


class Rotation(TaskTransform):
    """A fixed rotation per task, its angle drawn uniformly in ``[degrees[0], degrees[1])``
    (Rotated MNIST: Mammoth's ``Rotation``, [0, 180)). Counter-clockwise about the image centre,
    the corners filled with 0, as ``torchvision.transforms.functional.rotate`` on a tensor (and
    with its default nearest-neighbour interpolation, the same pixels), for the whole batch in one
    ``grid_sample``."""

    def __init__(
        self,
        n_tasks: int,
        image_shape: Sequence[int] | None = None,
        seed: int = 0,
        degrees: Sequence[float] = (0.0, 180.0),
        interpolation: str = "nearest",
    ):
        super().__init__(n_tasks)
        low, high = (float(d) for d in degrees)
        if not low <= high:
            raise ConfigError("scenario.task_transform.degrees", f"must be [low, high] with low <= high, got {degrees}")
        if interpolation not in ("nearest", "bilinear"):
            raise ConfigError("scenario.task_transform.interpolation", f"got {interpolation!r}", "nearest, bilinear")
        self.interpolation = interpolation
        g = torch.Generator().manual_seed(int(seed))
        angles = low + (high - low) * torch.rand(self.n_tasks, generator=g, dtype=torch.float64)
        self.register_buffer("angles", angles, persistent=False)  # degrees, one per task

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        radians = torch.deg2rad(self.per_task("angles", task, x.device))
        cos, sin, zero = radians.cos(), radians.sin(), torch.zeros_like(radians)
        # The inverse map from output to input coordinates (normalised, y pointing down).
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode=self.interpolation, padding_mode="zeros", align_corners=False)
