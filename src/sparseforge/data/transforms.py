"""Transforms, by where they run.

A dataset's ``train_transform`` and ``eval_transform`` (configs/dataset/) are each a list of
transforms applied in order (a list, so that a config overriding it replaces it whole):

- per-image transforms first: any callable (torchvision, timm) applied to each PIL image in the
  loader's workers. The last one returns a C x H x W tensor, uint8 (``PILToTensor``; timm's
  ``create_transform`` with ``normalize: false``) or float in [0, 1] (``ToTensor``);
- then :class:`BatchAugmentation` s (``RandomCropFlip``: the CIFAR crop and flip), applied to a
  whole batch on the training device. An in-memory dataset with only these is the fast path:
  batches are slices, and buffer samples are stored as raw uint8 and re-augmented in one call.

Normalisation with the dataset's statistics runs last, on the device (:class:`DeviceTransform`;
``dataset.normalize: false`` turns it off), after the per-task transform of a domain-incremental
stream (``task_transforms.py``). ``data.batch_transform`` then mixes a training batch and its labels
into soft targets (timm's ``Mixup``/CutMix), see :func:`mix_batch`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparseforge.errors import ConfigError


class BatchAugmentation(nn.Module):
    """A training augmentation of a whole batch on the device: float N x C x H x W in [0, 1] in,
    the same shape out. Subclasses implement ``forward(x)``."""


# padding_mode -> how the border is filled, torchvision's names (``transforms.Pad``): constant
# zeros; reflect mirrors without repeating the edge pixel; edge repeats it; symmetric mirrors
# with it.
PADDING_MODES = ("constant", "reflect", "edge", "symmetric")


def pad_images(x: torch.Tensor, p: int, mode: str) -> torch.Tensor:
    """N x C x H x W padded by ``p`` on every side, the border filled as ``mode`` says."""
    if mode == "symmetric":  # the mirror image including the edge: flipped border strips
        x = torch.cat([x[..., :p].flip(-1), x, x[..., -p:].flip(-1)], dim=-1)
        return torch.cat([x[..., :p, :].flip(-2), x, x[..., -p:, :].flip(-2)], dim=-2)
    return F.pad(x, (p, p, p, p), mode={"edge": "replicate"}.get(mode, mode))


class RandomCropFlip(BatchAugmentation):
    """Random crop with ``padding`` (0: none) and, with ``hflip``, a horizontal flip with probability
    1/2: the standard CIFAR augmentation, vectorised over the batch. ``padding_mode`` fills the
    border as torchvision's ``RandomCrop`` does: constant (zeros), reflect, edge or symmetric."""

    def __init__(self, padding: int = 0, hflip: bool = False, padding_mode: str = "constant"):
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise ConfigError(
                "dataset.train_transform.padding_mode", f"unknown value {padding_mode!r}", ", ".join(PADDING_MODES)
            )
        self.padding = int(padding)
        self.hflip = bool(hflip)
        self.padding_mode = padding_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if self.padding > 0:
            p = self.padding
            if self.padding_mode in ("reflect", "symmetric") and p > min(h, w) - (self.padding_mode == "reflect"):
                raise ConfigError(
                    "dataset.train_transform.padding",
                    f"{p} is too wide to {self.padding_mode}-pad {h} x {w} images",
                    f"at most {min(h, w) - (self.padding_mode == 'reflect')}",
                )
            padded = pad_images(x, p, self.padding_mode)
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


class _Compose:
    """Per-image transforms in sequence (torchvision's Compose, without its type checks)."""

    def __init__(self, transforms: list[Callable]):
        self.transforms = transforms

    def __call__(self, image):
        for transform in self.transforms:
            image = transform(image)
        return image


def split_transforms(transforms: Any, key: str) -> tuple[Callable | None, nn.Module | None]:
    """A transform list as (its per-image part, its batched part), each None when empty.

    ``transforms`` is a list (or a single transform, or None); ``key`` names it in errors.
    """
    if transforms is None:
        items = []
    elif isinstance(transforms, (list, tuple)) or (isinstance(transforms, Iterable) and not callable(transforms)):
        items = list(transforms)
    else:
        items = [transforms]
    first_batched = next((i for i, t in enumerate(items) if isinstance(t, BatchAugmentation)), len(items))
    images, batches = items[:first_batched], items[first_batched:]
    if not all(isinstance(t, BatchAugmentation) for t in batches):
        raise ConfigError(key, "per-image transforms must come before the batched ones (BatchAugmentation)")
    per_image = None if not images else images[0] if len(images) == 1 else _Compose(images)
    batched = None if not batches else batches[0] if len(batches) == 1 else nn.Sequential(*batches)
    return per_image, batched


class DeviceTransform(nn.Module):
    """uint8 (or [0, 1] float) N x C x H x W -> model input, on the device, in this order:

    1. the per-task transform of a domain-incremental stream (``task_transform``, given the task
       id of every example; see ``task_transforms.py``);
    2. the batched augmentation: the training one for training batches and replay draws, the
       evaluation one for evaluation batches;
    3. normalisation with the dataset's statistics, unless ``normalize`` is false
       (``dataset.normalize``: Mammoth's MNIST-like datasets feed ``ToTensor``'s [0, 1] values).
    """

    def __init__(
        self,
        mean,
        std,
        augment: nn.Module | None = None,
        eval_augment: nn.Module | None = None,
        normalize: bool = True,
        task_transform: nn.Module | None = None,
    ):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.augment = augment
        self.eval_augment = eval_augment
        self.normalize = bool(normalize)
        self.task_transform = task_transform

    def forward(self, x: torch.Tensor, train: bool, task: torch.Tensor | int | None = None) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if self.task_transform is not None:
            if task is None:
                raise ValueError("this stream transforms every task differently: pass the task ids of the batch")
            if isinstance(task, int):
                task = torch.full((len(x),), task, dtype=torch.long, device=x.device)
            x = self.task_transform(x, task)
        augment = self.augment if train else self.eval_augment
        if augment is not None:
            x = augment(x)
        if not self.normalize:
            return x
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return (x - mean) / std


# -- per-image transforms ----------------------------------------------------------------------------
def to_pil(image: torch.Tensor):
    """A uint8 C x H x W tensor as a PIL image (mode L for one channel, RGB for three)."""
    from torchvision.transforms.functional import to_pil_image

    return to_pil_image(image)


def stack_per_image(transform: Callable, images: Iterable) -> torch.Tensor:
    """``transform`` applied to each PIL image, stacked into one N x C x H x W tensor."""
    return torch.stack([transform(image) for image in images])


def per_image_on_tensors(transform: Callable, raw: torch.Tensor) -> torch.Tensor:
    """A per-image transform over a batch of uint8 tensors (a replay draw), back on their device."""
    return stack_per_image(transform, (to_pil(image) for image in raw.cpu())).to(raw.device)


class CenterView:
    """The fixed-size, un-augmented view of an image file: the short side resized to
    ``image_size / crop_fraction``, then the centre ``image_size`` square, as a uint8 tensor (the
    ImageNet evaluation crop: 256 then 224 at 0.875). Disk-backed datasets evaluate on it and
    replay buffers store it."""

    def __init__(self, image_size: int, crop_fraction: float = 0.875):
        from torchvision import transforms

        self.image_size = int(image_size)
        resize = round(self.image_size / float(crop_fraction))
        self.transform = transforms.Compose(
            [transforms.Resize(resize), transforms.CenterCrop(self.image_size), transforms.PILToTensor()]
        )

    def __call__(self, image) -> torch.Tensor:
        return self.transform(image)


# -- batch-level mixing ------------------------------------------------------------------------------
def mix_batch(mix: Callable, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``data.batch_transform`` on a training batch: ``mix(x, y) -> (mixed x, soft targets N x C)``.

    timm's Mixup pairs the examples of a batch, so it wants an even batch: an odd one gets a copy
    of its last example for the call, dropped afterwards (every kept example is still mixed with
    another example of the batch).
    """
    n = len(y)
    if n % 2:
        x, y = torch.cat([x, x[-1:]]), torch.cat([y, y[-1:]])
    x, target = mix(x, y)
    return x[:n], target[:n]


def flips_horizontally(transforms: Iterable[Any] | None) -> bool:
    """Whether a transform list mirrors images at random: a ``RandomCropFlip`` with ``hflip``, or a
    per-image horizontal flip (torchvision's ``RandomHorizontalFlip``, also inside a ``Compose``,
    as timm's ``create_transform`` builds). iCaRL averages class means over mirrored views then."""
    for transform in transforms or ():
        if getattr(transform, "hflip", False) is True or type(transform).__name__ == "RandomHorizontalFlip":
            return True
        if flips_horizontally(getattr(transform, "transforms", None)):
            return True
    return False
