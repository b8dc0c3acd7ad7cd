"""Tiny-ImageNet (200 classes, 64x64) read with torchvision's ImageFolder.

The official ``tiny-imagenet-200`` layout keeps validation images in one folder with labels in
``val/val_annotations.txt``. On first use we map them into class folders
(``val_by_class/<wnid>/``, as symlinks) so that ImageFolder reads both splits the same way. The
decoded uint8 tensors are cached next to the data (``cache_{train,val}.pt``): decoding 100k JPEGs
takes minutes, loading the cache takes a second.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sparseforge.data.base import ImageDataset, ImageTensors
from sparseforge.data.registry import register_dataset
from sparseforge.errors import DataNotFoundError

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


@register_dataset("tiny_imagenet")
class TinyImageNet(ImageDataset):
    num_classes = 200
    in_chans = 3
    image_size = 64
    mean = (0.4802, 0.4481, 0.3975)
    std = (0.2302, 0.2265, 0.2262)

    @property
    def base(self) -> Path:
        return self.root / "tiny-imagenet-200"

    def expected_location(self) -> str:
        return f"{self.base}/ with wnids.txt, train/<wnid>/images/*.JPEG, val/images/ and val/val_annotations.txt"

    def _ensure_downloaded(self) -> None:
        if (self.base / "wnids.txt").exists():
            return
        if not self.download:
            raise self.missing("download disabled")
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(URL, download_root=str(self.root))
        except Exception as exc:  # network errors come in many types
            raise self.missing(f"download failed: {exc}") from None

    def _val_by_class(self) -> Path:
        target = self.base / "val_by_class"
        if target.exists():
            return target
        annotations = self.base / "val" / "val_annotations.txt"
        if not annotations.exists():
            raise self.missing("val/val_annotations.txt is missing")
        tmp = self.base / "val_by_class.tmp"
        for line in annotations.read_text().splitlines():
            if not line.strip():
                continue
            fname, wnid = line.split("\t")[:2]
            (tmp / wnid).mkdir(parents=True, exist_ok=True)
            link = tmp / wnid / fname
            if not link.exists():
                os.symlink((self.base / "val" / "images" / fname).resolve(), link)
        tmp.rename(target)
        return target

    def _load(self, train: bool) -> ImageTensors:
        self._ensure_downloaded()
        cache = self.base / f"cache_{'train' if train else 'val'}.pt"
        if cache.exists():
            blob = torch.load(cache)
            return ImageTensors(blob["x"], blob["y"])
        from torchvision.datasets import ImageFolder

        wnids = (self.base / "wnids.txt").read_text().split()
        folder = self.base / "train" if train else self._val_by_class()
        ds = ImageFolder(str(folder))
        # ImageFolder sorts class folders; map its indices to the wnids.txt order.
        to_label = torch.tensor([wnids.index(c) for c in ds.classes])
        if not ds.samples:
            raise DataNotFoundError(f"no images found in {folder}")
        x = torch.empty(len(ds), 3, self.image_size, self.image_size, dtype=torch.uint8)
        y = torch.empty(len(ds), dtype=torch.long)
        for i, (path, cls) in enumerate(ds.samples):
            img = ds.loader(path).convert("RGB").resize((self.image_size, self.image_size))
            x[i] = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
            y[i] = to_label[cls]
        tmp = cache.with_suffix(".tmp")
        torch.save({"x": x, "y": y}, tmp)
        tmp.replace(cache)
        return ImageTensors(x, y)
