"""MNIST, Fashion-MNIST and EMNIST-letters through torchvision's dataset classes (IDX files)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from sparseforge.data.base import ImageDataset, ImageTensors
from sparseforge.data.registry import register_dataset
from sparseforge.errors import DataCorruptError

_IDX_ITEM_BYTES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}


def check_idx_file(path: Path) -> None:
    """Refuse an IDX file whose size is not the one its header announces (a cut-short download
    or copy). torchvision only checks that the files exist, so downloading again would not help."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        magic = file.read(4)
        ndim = magic[3] if len(magic) == 4 else 0
        dims = file.read(4 * ndim)
    expected = None
    if len(magic) == 4 and magic[:2] == b"\0\0" and magic[2] in _IDX_ITEM_BYTES and len(dims) == 4 * ndim:
        shape = [int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim)]
        expected = 4 + 4 * ndim + math.prod(shape) * _IDX_ITEM_BYTES[magic[2]]
    if size != expected:
        why = f"{size} bytes, its header announces {expected}" if expected else "not an IDX file"
        raise DataCorruptError(f"dataset file {path} is corrupt or truncated ({why}): delete it and download again")


class _IdxDataset(ImageDataset):
    in_chans = 1
    image_size = 28
    torchvision_class: str

    def _torchvision(self, train: bool):
        import torchvision.datasets as tvd

        return getattr(tvd, self.torchvision_class)(str(self.root), train=train, download=self.download)

    def expected_location(self) -> str:
        folder = self.root / self.torchvision_class / "raw"
        return (
            f"{folder}/ with train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
        )

    def raw_files(self, train: bool) -> list[Path]:
        split = "train" if train else "t10k"
        raw = self.root / self.torchvision_class / "raw"
        return [raw / f"{split}-images-idx3-ubyte", raw / f"{split}-labels-idx1-ubyte"]

    def _check_files(self, train: bool) -> None:
        for path in self.raw_files(train):
            if path.is_file():
                check_idx_file(path)

    def _load(self, train: bool) -> ImageTensors:
        self._check_files(train)
        ds = self._torchvision(train)
        return ImageTensors(ds.data.unsqueeze(1).contiguous(), torch.as_tensor(ds.targets).long())


@register_dataset("mnist")
class MNIST(_IdxDataset):
    num_classes = 10
    mean = (0.1307,)
    std = (0.3081,)
    torchvision_class = "MNIST"


@register_dataset("fashion_mnist")
class FashionMNIST(_IdxDataset):
    num_classes = 10
    mean = (0.2860,)
    std = (0.3530,)
    torchvision_class = "FashionMNIST"


@register_dataset("emnist_letters")
class EMNISTLetters(_IdxDataset):
    """EMNIST 'letters': 26 classes. torchvision's labels are 1..26; we shift them to 0..25."""

    num_classes = 26
    mean = (0.1722,)
    std = (0.3309,)
    torchvision_class = "EMNIST"

    def _torchvision(self, train: bool):
        import torchvision.datasets as tvd

        return tvd.EMNIST(str(self.root), split="letters", train=train, download=self.download)

    def expected_location(self) -> str:
        return f"{self.root}/EMNIST/raw/ with emnist-letters-{{train,test}}-{{images-idx3,labels-idx1}}-ubyte"

    def raw_files(self, train: bool) -> list[Path]:
        split = "train" if train else "test"
        raw = self.root / "EMNIST" / "raw"
        return [raw / f"emnist-letters-{split}-images-idx3-ubyte", raw / f"emnist-letters-{split}-labels-idx1-ubyte"]

    def _load(self, train: bool) -> ImageTensors:
        self._check_files(train)
        ds = self._torchvision(train)
        # EMNIST's IDX images are stored transposed relative to MNIST.
        x = ds.data.transpose(1, 2).unsqueeze(1).contiguous()
        return ImageTensors(x, torch.as_tensor(ds.targets).long() - 1)
