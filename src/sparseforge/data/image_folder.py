"""Any folder of images with one subfolder per class, read with torchvision's ImageFolder machinery.

The layout is torchvision's: ``<root>/<train_split>/<class>/<image>`` and
``<root>/<test_split>/<class>/<image>``, the same class folders in both splits (a class may lack
test images). Classes are numbered in sorted folder order, as ImageFolder does. ImageNet subsets,
CUB, ImageNet-R or miniImageNet arranged this way are a config away:
``dataset=image_folder dataset.root=/path dataset.image_size=224``.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

import torch

from sparseforge.data.files import IMAGENET_MEAN, IMAGENET_STD, ImageFilesDataset
from sparseforge.data.registry import register_dataset


@register_dataset("image_folder")
class ImageFolder(ImageFilesDataset):
    how_to_get: ClassVar[str] = "arrange the images in that layout"
    where_to_point: ClassVar[str] = "set dataset.root to the folder that holds the split folders"

    def __init__(
        self,
        root,
        image_size: int = 224,
        crop_fraction: float = 0.875,
        train_split: str = "train",
        test_split: str = "val",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        train_transform: Any = None,
        eval_transform: Any = None,
        normalize: bool = True,
    ):
        super().__init__(root, image_size, crop_fraction, train_transform, eval_transform, normalize)
        self.train_split, self.test_split = str(train_split), str(test_split)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def expected_location(self) -> str:
        return (
            f"{self.root}/{self.train_split}/<class>/<image> and {self.root}/{self.test_split}/<class>/<image> "
            "(one folder per class, the same class folders in both splits; .jpg, .png, ...)"
        )

    @cached_property
    def class_names(self) -> tuple[str, ...]:
        from torchvision.datasets.folder import find_classes

        try:
            return tuple(find_classes(str(self.root / self.train_split))[0])
        except (FileNotFoundError, OSError) as exc:
            raise self.missing(str(exc)) from None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _files(self, train: bool) -> tuple[list[str], torch.Tensor]:
        from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

        folder = self.root / (self.train_split if train else self.test_split)
        class_to_idx = {name: i for i, name in enumerate(self.class_names)}
        if not train:
            extra = sorted(set(find_classes(str(folder))[0]) - set(class_to_idx))
            if extra:
                raise self.missing(f"{folder} has class folders that {self.train_split}/ lacks: {', '.join(extra[:5])}")
        samples = make_dataset(str(folder), class_to_idx, IMG_EXTENSIONS, allow_empty=not train)
        return [path for path, _ in samples], torch.tensor([label for _, label in samples], dtype=torch.long)
