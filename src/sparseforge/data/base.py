"""The common shape of every dataset: in-memory uint8 images plus their statistics.

Each dataset file loads its split through torchvision's real dataset class and hands back
``ImageTensors`` (uint8, N x C x H x W). Augmentation and normalisation then run batched on the
training device (see ``transforms.py``), which keeps the DataLoader trivial and makes replay
buffers store the raw, non-augmented bytes, as Mammoth's DER++ does.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from sparseforge.errors import DataCorruptError, DataNotFoundError

DATA_DIR_ENV = "SPARSEFORGE_DATA_DIR"


@dataclass
class ImageTensors:
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


class ImageDataset:
    """Base class: a named image-classification dataset with its standard recipe."""

    name: ClassVar[str]
    num_classes: ClassVar[int]
    in_chans: ClassVar[int]
    image_size: ClassVar[int]
    mean: ClassVar[tuple[float, ...]]
    std: ClassVar[tuple[float, ...]]
    # Standard training augmentation: random crop with this padding (0 = none) and h-flip.
    crop_padding: ClassVar[int] = 0
    hflip: ClassVar[bool] = False
    class_names: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, root: str | os.PathLike | None = None, download: bool = True):
        self.root = Path(root if root is not None else os.environ.get(DATA_DIR_ENV, "./data")).expanduser()
        self.download = download
        self._cache: dict[bool, ImageTensors] = {}

    # -- to implement -------------------------------------------------------------------------
    def _load(self, train: bool) -> ImageTensors:
        raise NotImplementedError

    def expected_location(self) -> str:
        """Where the files must be, shown in the missing-data error."""
        raise NotImplementedError

    how_to_get: ClassVar[str] = "run once with internet access and dataset.download=true"

    # -- public ---------------------------------------------------------------------------------
    def load(self, train: bool) -> ImageTensors:
        """The split as uint8 tensors (cached). Raises DataNotFoundError with a fix-it message."""
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
        new = [self.root] if existed is None else [p for p in self.root.iterdir() if p not in existed]
        for top in new:
            if top.is_dir() and not any(p.is_file() for p in top.rglob("*")):
                shutil.rmtree(top, ignore_errors=True)

    def missing(self, reason: str = "") -> DataNotFoundError:
        why = f" ({reason.strip().splitlines()[0]})" if reason else ""
        return DataNotFoundError(
            f"dataset '{self.name}' not found under {self.root}: expected {self.expected_location()}{why}. "
            f"To fix: {self.how_to_get}, or point paths.data_dir (env {DATA_DIR_ENV}) at a folder that has it."
        )

    @property
    def targets_train(self) -> torch.Tensor:
        return self.load(train=True).y
