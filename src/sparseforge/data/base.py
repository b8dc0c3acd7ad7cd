"""The common shape of every dataset: two splits of labelled images plus their statistics.

A split is one of two kinds, both read through torchvision's dataset classes:

- ``ImageTensors`` (in memory; MNIST, CIFAR, Tiny-ImageNet, digits): the whole split as uint8
  N x C x H x W. Batches are slices and the default augmentation runs batched on the training
  device (see ``transforms.py``): the fast path;
- ``ImageFiles`` (on disk; ``image_folder``, CUB, see ``files.py``): file paths and labels;
  images are decoded as they are needed, in the loader's workers.

Both answer the same three questions: the labels (``y``, all a scenario needs to cut tasks), the
raw view of some examples (``raw``: uint8, fixed size; what evaluation starts from and what a
replay buffer stores) and both at once with a per-image transform applied to each source image
(``fetch``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from sparseforge.data.transforms import stack_per_image, to_pil
from sparseforge.errors import ConfigError, DataCorruptError, DataNotFoundError

DATA_DIR_ENV = "SPARSEFORGE_DATA_DIR"


class ImageSplit(Protocol):
    """What the datamodule, the scenarios and the methods need from a split."""

    y: torch.Tensor  # int64 labels, N

    def __len__(self) -> int: ...

    @property
    def raw_shape(self) -> tuple[int, ...]:
        """C x H x W of the raw view."""
        ...

    def raw(self, index: torch.Tensor) -> torch.Tensor:
        """The un-augmented uint8 view of examples ``index`` (N x C x H x W)."""
        ...

    def fetch(self, index: torch.Tensor, transform=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(raw(index), transform applied to each source image)``; the second is None without a
        transform. Reads each image once."""
        ...


@dataclass
class ImageTensors:
    """An in-memory split: the source images are the raw views."""

    x: torch.Tensor  # uint8, N x C x H x W
    y: torch.Tensor  # int64, N

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"images must be uint8 NCHW, got {self.x.dtype} {tuple(self.x.shape)}")
        if len(self.x) != len(self.y):
            raise ValueError("images and labels differ in length")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: torch.Tensor) -> ImageTensors:
        return ImageTensors(self.x[index], self.y[index])

    @property
    def raw_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def raw(self, index: torch.Tensor) -> torch.Tensor:
        return self.x[index]

    def fetch(self, index: torch.Tensor, transform=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        raw = self.x[index]
        return raw, (None if transform is None else stack_per_image(transform, (to_pil(r) for r in raw)))


class ImageDataset:
    """Base class: a named image-classification dataset with its statistics and transforms.

    ``train_transform`` and ``eval_transform`` come from the config (see ``transforms.py`` for
    what they may be); ``image_size`` is the size of the raw views, fixed by the files for
    in-memory datasets (configs repeat it so that transforms can say ``${dataset.image_size}``).
    ``normalize``: whether the inputs are normalised with ``mean`` and ``std`` (last, on the
    device); false feeds the [0, 1] values, as Mammoth does for its MNIST-like datasets.
    """

    name: ClassVar[str]  # set by @register_dataset
    num_classes: ClassVar[int]
    in_chans: ClassVar[int]
    image_size: ClassVar[int]
    mean: ClassVar[tuple[float, ...]]
    std: ClassVar[tuple[float, ...]]
    class_names: ClassVar[tuple[str, ...] | None] = None
    #: How a user points the dataset at its files, for the missing-data error.
    where_to_point: ClassVar[str] = f"point paths.data_dir (env {DATA_DIR_ENV}) at a folder that has it"

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        download: bool = True,
        image_size: int | None = None,
        train_transform: Any = None,
        eval_transform: Any = None,
        normalize: bool = True,
    ):
        self.root = Path(root if root is not None else os.environ.get(DATA_DIR_ENV, "./data")).expanduser()
        self.download = download
        if image_size is not None and int(image_size) != self.image_size:
            raise ConfigError(
                "dataset.image_size",
                f"{self.name} stores {self.image_size}x{self.image_size} images, got {image_size}; "
                "resize in dataset.train_transform and dataset.eval_transform instead",
                str(self.image_size),
            )
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.normalize = bool(normalize)
        self._cache: dict[bool, ImageSplit] = {}

    # -- to implement -------------------------------------------------------------------------
    def _load(self, train: bool) -> ImageSplit:
        raise NotImplementedError

    def expected_location(self) -> str:
        """Where the files must be, shown in the missing-data error."""
        raise NotImplementedError

    how_to_get: ClassVar[str] = "run once with internet access and dataset.download=true"

    # -- public ---------------------------------------------------------------------------------
    def load(self, train: bool) -> ImageSplit:
        """The split (cached). Raises DataNotFoundError with a fix-it message."""
        if train not in self._cache:
            existed = set(self.root.iterdir()) if self.root.is_dir() else None
            try:
                self._cache[train] = self._load(train)
            except (DataNotFoundError, DataCorruptError):
                self._remove_empty_new_folders(existed)
                raise
            except (RuntimeError, FileNotFoundError, OSError) as exc:
                self._remove_empty_new_folders(existed)
                raise self.missing(str(exc)) from None
        return self._cache[train]

    def _remove_empty_new_folders(self, existed: set[Path] | None) -> None:
        """A failed download leaves empty folders (e.g. MNIST/raw/) behind: remove those."""
        if not self.root.is_dir():
            return
        new = [self.root] if existed is None else [p for p in self.root.iterdir() if p not in existed]
        for top in new:
            if top.is_dir() and not any(p.is_file() for p in top.rglob("*")):
                shutil.rmtree(top, ignore_errors=True)

    def missing(self, reason: str = "") -> DataNotFoundError:
        why = f" ({reason.strip().splitlines()[0]})" if reason.strip() else ""
        return DataNotFoundError(
            f"dataset '{self.name}' not found under {self.root}: expected {self.expected_location()}{why}. "
            f"To fix: {self.how_to_get}, or {self.where_to_point}."
        )

    @property
    def targets_train(self) -> torch.Tensor:
        return self.load(train=True).y
