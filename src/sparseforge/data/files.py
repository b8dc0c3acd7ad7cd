"""Disk-backed datasets: image files decoded as they are needed, in the loader's workers.

A disk-backed dataset only lists its files and their labels (``_files``). Each split is then an
:class:`ImageFiles`, whose raw view of an image is its :class:`~sparseforge.data.transforms.CenterView`:
the short side resized to ``image_size / crop_fraction`` and the centre ``image_size`` square,
as uint8. Evaluation starts from that view (then ``eval_transform``, usually none), and a replay
buffer stores it: a fixed-size tensor, so buffer memory is exact, and re-augmenting a stored
example needs no disk read. A fresh training image goes through the per-image
``train_transform`` from its full-resolution file; a replayed one from its stored view (as
Mammoth re-augments its buffer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from sparseforge.data.base import ImageDataset
from sparseforge.data.transforms import CenterView, stack_per_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageFiles:
    """A split on disk: image paths and labels; images are decoded as RGB when read."""

    def __init__(self, paths: Sequence[str], y: torch.Tensor, view: CenterView):
        if len(paths) != len(y):
            raise ValueError("paths and labels differ in length")
        self.paths, self.y, self.view = list(paths), y.long(), view

    def __len__(self) -> int:
        return len(self.y)

    @property
    def raw_shape(self) -> tuple[int, ...]:
        return (3, self.view.image_size, self.view.image_size)

    def image(self, i: int):
        from torchvision.datasets.folder import pil_loader

        return pil_loader(self.paths[i])

    def raw(self, index: torch.Tensor) -> torch.Tensor:
        return self.fetch(index)[0]

    def fetch(self, index: torch.Tensor, transform: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        images = [self.image(i) for i in index.tolist()]
        raw = stack_per_image(self.view, images) if images else torch.empty(0, *self.raw_shape, dtype=torch.uint8)
        return raw, (None if transform is None else stack_per_image(transform, images))


class ImageFilesDataset(ImageDataset):
    """Base class of the disk-backed datasets: implement ``_files`` and ``expected_location``.

    ``image_size`` and ``crop_fraction`` define the raw view (see the module docstring); the
    statistics default to ImageNet's, the usual choice for natural images at 224 pixels.
    """

    in_chans: ClassVar[int] = 3
    mean: ClassVar[tuple[float, ...]] = IMAGENET_MEAN
    std: ClassVar[tuple[float, ...]] = IMAGENET_STD
    how_to_get: ClassVar[str] = "unpack the dataset there (it is not downloaded automatically)"

    def __init__(
        self,
        root=None,
        image_size: int = 224,
        crop_fraction: float = 0.875,
        train_transform: Any = None,
        eval_transform: Any = None,
        normalize: bool = True,
    ):
        super().__init__(
            root, download=False, train_transform=train_transform, eval_transform=eval_transform, normalize=normalize
        )
        self.image_size = int(image_size)
        self.crop_fraction = float(crop_fraction)

    def _files(self, train: bool) -> tuple[list[str], torch.Tensor]:
        """Paths of the split's images and their labels (0..num_classes-1)."""
        raise NotImplementedError

    def _load(self, train: bool) -> ImageFiles:
        paths, y = self._files(train)
        if not paths:
            raise self.missing(f"no images in the {'training' if train else 'test'} split")
        return ImageFiles(paths, y, CenterView(self.image_size, self.crop_fraction))
