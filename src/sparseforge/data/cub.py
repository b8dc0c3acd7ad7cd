"""CUB-200-2011 (200 bird species; 5,994 training and 5,794 test images), streamed from disk.

Reads the official archive's index files: ``images.txt`` (id, path), ``image_class_labels.txt``
(id, class 1..200) and ``train_test_split.txt`` (id, 1 = training).
"""

from __future__ import annotations

import torch

from sparseforge.data.files import ImageFilesDataset
from sparseforge.data.registry import register_dataset


@register_dataset("cub200")
class CUB200(ImageFilesDataset):
    num_classes = 200

    def expected_location(self) -> str:
        return (
            f"{self.root}/CUB_200_2011/ with images/, images.txt, image_class_labels.txt and "
            "train_test_split.txt (the official archive, unpacked)"
        )

    def _files(self, train: bool) -> tuple[list[str], torch.Tensor]:
        base = self.root / "CUB_200_2011"
        paths, labels, is_train = (
            dict(line.split() for line in (base / name).read_text().splitlines() if line.strip())
            for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt")
        )
        ids = [i for i in paths if is_train[i] == ("1" if train else "0")]
        return [str(base / "images" / paths[i]) for i in ids], torch.tensor([int(labels[i]) - 1 for i in ids])
