"""CUB-200-2011 on a tiny copy of the official archive's layout, written here: the split and the
labels come from its index files, images stream from disk, and a missing archive is one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sparseforge.data.cub import CUB200
from sparseforge.errors import DataNotFoundError
from tests.helpers.config import compose_config


def write_cub(root, per_class: int = 3, classes: int = 200):
    """``CUB_200_2011/`` with JPEGs and the three index files; every class's first image is a test image."""
    base = root / "CUB_200_2011"
    rng = np.random.default_rng(0)
    images, labels, split = [], [], []
    for c in range(1, classes + 1):
        folder = base / "images" / f"{c:03d}.Bird_{c}"
        folder.mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"b_{k}.jpg")
            i = len(images) + 1
            images.append(f"{i} {folder.name}/b_{k}.jpg")
            labels.append(f"{i} {c}")
            split.append(f"{i} {int(k > 0)}")
    for name, lines in (("images", images), ("image_class_labels", labels), ("train_test_split", split)):
        (base / f"{name}.txt").write_text("\n".join(lines) + "\n")


def test_cub200_reads_the_official_split_and_labels(tmp_path):
    write_cub(tmp_path)
    ds = CUB200(tmp_path, image_size=32)
    train, test = ds.load(True), ds.load(False)
    assert (len(train), len(test)) == (400, 200)
    assert test.y.tolist() == list(range(200))  # labels 1..200 shifted to 0..199
    assert torch.equal(torch.bincount(train.y), torch.full((200,), 2))
    assert train.raw(torch.tensor([0, 399])).shape == (2, 3, 32, 32)


def test_cub200_config_builds_it(tmp_path):
    cfg = compose_config(["dataset=cub200", f"paths.data_dir={tmp_path}"])
    assert cfg.dataset._target_ == "sparseforge.data.cub.CUB200" and cfg.dataset.image_size == 224


def test_missing_cub200_is_one_line(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        CUB200(tmp_path).load(True)
    assert "\n" not in str(err.value) and "CUB_200_2011/ with images/" in str(err.value)
