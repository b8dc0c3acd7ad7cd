"""scikit-learn's 8x8 digits: shipped inside the scikit-learn wheel, so it needs no download.

It is the embedded default dataset. There is no official split, so a fixed stratified 75/25
split (random_state 0) is used.
"""

from __future__ import annotations

import numpy as np
import torch

from sparseforge.data.base import ImageDataset, ImageTensors
from sparseforge.data.registry import register_dataset


@register_dataset("digits")
class Digits(ImageDataset):
    num_classes = 10
    in_chans = 1
    image_size = 8
    mean = (0.3053,)
    std = (0.3759,)
    how_to_get = "install scikit-learn (pip install scikit-learn)"

    def expected_location(self) -> str:
        return "scikit-learn's bundled digits data (sklearn.datasets.load_digits)"

    def _load(self, train: bool) -> ImageTensors:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        idx_train, idx_test = train_test_split(
            np.arange(len(images)), test_size=0.25, random_state=0, stratify=digits.target
        )
        idx = np.sort(idx_train if train else idx_test)
        x = torch.from_numpy(images[idx]).unsqueeze(1).contiguous()
        y = torch.from_numpy(digits.target[idx]).long()
        return ImageTensors(x, y)
