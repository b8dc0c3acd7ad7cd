"""miniImageNet-100 (100 classes, 600 images each) read with torchvision's ImageFolder from a
folder the user provides; nothing is downloaded.

Expected layout (that of CL-with-DST's release after its first run, which moves 100 random
images of each class out of the Kaggle dump into ``validation/``): ``<data_dir>/miniImageNet100/
train/<class>/*.jpg`` and ``validation/<class>/*.jpg`` (a ``test/`` folder is read instead when
present). Labels follow ImageFolder's sorted class names, so tasks of consecutive labels are the
same on every machine (the release numbers classes in ``os.listdir`` order). Images are resized
on their shorter side to 32 and center-cropped to 32x32, once, and cached next to the data
(``cache_{train,test}.pt``) as uint8 tensors: at 32 pixels the in-memory fast path beats
streaming the JPEGs (``dataset=image_folder`` streams them, for full-resolution work).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sparseforge.data.base import ImageDataset, ImageTensors
from sparseforge.data.registry import register_dataset

FOLDER = "miniImageNet100"


@register_dataset("mini_imagenet")
class MiniImageNet(ImageDataset):
    num_classes = 100
    in_chans = 3
    image_size = 32
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)
    how_to_get = (
        "download miniImageNet (e.g. Kaggle's arjunashok33/miniimagenet), keep 500 images per class "
        "in train/<class>/ and move 100 to validation/<class>/"
    )

    def __init__(self, root=None, **options):
        super().__init__(root, download=False, **options)  # nothing to download: the folder is the user's

    @property
    def base(self) -> Path:
        return self.root / FOLDER

    def expected_location(self) -> str:
        return f"{self.base}/ with train/<class>/*.jpg and validation/<class>/*.jpg (or test/<class>/), 100 classes"

    def _split_folder(self, train: bool) -> Path:
        if train:
            return self.base / "train"
        test = self.base / "test"
        return test if test.is_dir() else self.base / "validation"

    def _load(self, train: bool) -> ImageTensors:
        folder = self._split_folder(train)
        if not folder.is_dir():
            raise self.missing(f"no folder {folder.name}/")
        cache = self.base / f"cache_{'train' if train else 'test'}.pt"
        if cache.exists():
            blob = torch.load(cache)
            return ImageTensors(blob["x"], blob["y"])
        from torchvision.datasets import ImageFolder
        from torchvision.transforms import functional as TF

        ds = ImageFolder(str(folder))
        if len(ds.classes) != self.num_classes:
            raise self.missing(f"{folder.name}/ has {len(ds.classes)} class folders, not {self.num_classes}")
        x = torch.empty(len(ds), 3, self.image_size, self.image_size, dtype=torch.uint8)
        y = torch.tensor([cls for _, cls in ds.samples], dtype=torch.long)
        for i, (path, _) in enumerate(ds.samples):
            img = TF.center_crop(TF.resize(ds.loader(path).convert("RGB"), self.image_size), self.image_size)
            x[i] = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
        tmp = cache.with_suffix(".tmp")
        torch.save({"x": x, "y": y}, tmp)
        tmp.replace(cache)
        return ImageTensors(x, y)
