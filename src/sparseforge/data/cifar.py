"""CIFAR-10 and CIFAR-100 through torchvision's dataset classes (pickled batches).

torchvision verifies the md5 of every batch file. ``verify_checksums=False`` reads files that
are in the right format but are not the official ones (for example the tiny files the tests
write); keep it on for real data.

``std`` replaces the per-channel std used for normalisation: SHARP's code (and many CIFAR-10
repositories) normalise CIFAR-10 with (0.2023, 0.1994, 0.2010) instead of the training set's
(0.2470, 0.2435, 0.2616); the ``sharp_cifar10`` preset sets it.
"""

from __future__ import annotations

import torch

from sparseforge.data.base import ImageDataset, ImageTensors
from sparseforge.data.registry import register_dataset
from sparseforge.errors import ConfigError


def _without_checksums(cls):
    """A subclass of a torchvision CIFAR class whose file list carries no md5."""
    return type(
        f"Unverified{cls.__name__}",
        (cls,),
        {
            "train_list": [[name, None] for name, _ in cls.train_list],
            "test_list": [[name, None] for name, _ in cls.test_list],
            "meta": {**cls.meta, "md5": None},
        },
    )


class _Cifar(ImageDataset):
    in_chans = 3
    image_size = 32
    torchvision_class: str
    folder: str

    def __init__(self, root=None, download: bool = True, verify_checksums: bool = True, std=None, **options):
        super().__init__(root, download, **options)
        self.verify_checksums = verify_checksums
        if std is not None:
            if len(std) != self.in_chans or not all(float(v) > 0 for v in std):
                raise ConfigError("dataset.std", f"must be {self.in_chans} positive numbers, got {list(std)}")
            self.std = tuple(float(v) for v in std)

    def expected_location(self) -> str:
        import torchvision.datasets as tvd

        cls = getattr(tvd, self.torchvision_class)
        files = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        where = f"{self.root / self.folder}/ with {', '.join(files)} (torchvision's pickled batches)"
        if self.verify_checksums and (self.root / self.folder).is_dir():
            where += "; if these are your own files in this format, set dataset.verify_checksums=false"
        return where

    def _load(self, train: bool) -> ImageTensors:
        import torchvision.datasets as tvd

        cls = getattr(tvd, self.torchvision_class)
        if not self.verify_checksums:
            cls = _without_checksums(cls)
        ds = cls(str(self.root), train=train, download=self.download and self.verify_checksums)
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # N,H,W,C -> N,C,H,W
        return ImageTensors(x, torch.as_tensor(ds.targets).long())


@register_dataset("cifar10")
class CIFAR10(_Cifar):
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    torchvision_class = "CIFAR10"
    folder = "cifar-10-batches-py"


@register_dataset("cifar100")
class CIFAR100(_Cifar):
    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    torchvision_class = "CIFAR100"
    folder = "cifar-100-python"
