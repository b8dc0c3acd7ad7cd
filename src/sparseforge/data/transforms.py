"""Batched, on-device augmentation and normalisation.

Doing this per batch on the training device instead of per PIL image in DataLoader workers is
what keeps replay cheap: buffer samples are stored as raw uint8 and re-augmented in one call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BatchTransform(nn.Module):
    """uint8 NCHW -> normalised float; with ``train=True`` also random crop (padding) + h-flip."""

    def __init__(self, mean, std, crop_padding: int = 0, hflip: bool = False):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.crop_padding = crop_padding
        self.hflip = hflip

    def forward(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if train:
            x = self.augment(x)
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return (x - mean) / std

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if self.crop_padding > 0:
            p = self.crop_padding
            padded = F.pad(x, (p, p, p, p))
            # One random offset per image, applied with a gather over an index grid.
            dy = torch.randint(0, 2 * p + 1, (n,), device=x.device)
            dx = torch.randint(0, 2 * p + 1, (n,), device=x.device)
            rows = dy.view(n, 1) + torch.arange(h, device=x.device).view(1, h)  # n x h
            cols = dx.view(n, 1) + torch.arange(w, device=x.device).view(1, w)  # n x w
            batch = torch.arange(n, device=x.device).view(n, 1, 1)
            x = padded.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)
        if self.hflip:
            flip = torch.rand(n, device=x.device) < 0.5
            x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
        return x.contiguous()
