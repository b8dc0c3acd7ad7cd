"""MNIST, Fashion-MNIST and EMNIST-letters through torchvision's dataset classes (IDX files)."""

from __future__ import annotations

import torch

from sparseforge.data.base import ImageDataset, ImageTensors
from sparseforge.data.registry import register_dataset


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

    def _load(self, train: bool) -> ImageTensors:
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

    def _load(self, train: bool) -> ImageTensors:
        ds = self._torchvision(train)
        # EMNIST's IDX images are stored transposed relative to MNIST.
        x = ds.data.transpose(1, 2).unsqueeze(1).contiguous()
        return ImageTensors(x, torch.as_tensor(ds.targets).long() - 1)
