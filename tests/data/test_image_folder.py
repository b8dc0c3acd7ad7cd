"""The disk-backed ImageFolder dataset on a tiny folder of PNGs written by the test: labels from
sorted class folders, fixed-size centre views, per-image transforms from the full-size file, the
dataset registry against the configs, and one-line errors for every broken layout."""

from __future__ import annotations

import shutil

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from torchvision import transforms as T

from sparseforge.data import DATASETS, ImageFiles, ImageFolder
from sparseforge.errors import DataNotFoundError
from tests.helpers import fake_data
from tests.helpers.cli import REPO
from tests.helpers.config import compose_config


def test_reads_the_layout_with_labels_in_sorted_class_order(tmp_path):
    fake_data.write_image_folder(tmp_path, num_classes=3, per_class_train=4, per_class_test=2)
    ds = ImageFolder(tmp_path, image_size=24)
    train, test = ds.load(True), ds.load(False)
    assert isinstance(train, ImageFiles) and ds.num_classes == 3
    assert ds.class_names == ("class_00", "class_01", "class_02")
    assert torch.equal(torch.bincount(train.y), torch.tensor([4, 4, 4]))
    assert torch.equal(torch.bincount(test.y), torch.tensor([2, 2, 2]))
    assert all(f"class_{int(label):02d}" in path for path, label in zip(train.paths, train.y, strict=True))
    raw = train.raw(torch.tensor([0, 5, 11]))
    assert raw.dtype == torch.uint8 and raw.shape == (3, 3, 24, 24) == (3, *train.raw_shape)


def test_fetch_reads_each_image_once_for_its_view_and_its_transform(tmp_path):
    fake_data.write_image_folder(tmp_path, num_classes=2, per_class_train=2, per_class_test=1)
    train = ImageFolder(tmp_path, image_size=16, crop_fraction=1.0).load(True)
    index = torch.tensor([3, 0])
    raw, x = train.fetch(index, T.Compose([T.Resize((20, 30)), T.PILToTensor()]))
    assert torch.equal(raw, train.raw(index))
    # the transform sees the full-size file, not the view
    assert x.shape == (2, 3, 20, 30)
    full = Image.open(train.paths[3]).convert("RGB")
    assert torch.equal(x[0], T.PILToTensor()(T.Resize((20, 30))(full)))
    assert train.fetch(index)[1] is None


def test_the_config_streams_from_disk_with_imagenet_style_transforms(tmp_path):
    fake_data.write_image_folder(tmp_path)
    cfg = compose_config(["dataset=image_folder", f"dataset.root={tmp_path}", "dataset.image_size=32"])
    ds = instantiate(cfg.dataset)
    assert isinstance(ds, ImageFolder) and ds.image_size == 32 and ds.in_chans == 3
    x = T.Compose(list(ds.train_transform))(Image.open(ds.load(True).paths[0]))
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32)  # RandomResizedCrop to ${dataset.image_size}
    assert list(ds.eval_transform) == []


def test_every_registered_dataset_has_its_config_and_every_config_a_registered_dataset():
    def target_class(option: str) -> type:
        module, _, name = compose_config([f"dataset={option}", "dataset.root=/x"]).dataset._target_.rpartition(".")
        return getattr(__import__(module, fromlist=[name]), name)

    for name in DATASETS.names():  # configs/dataset/<name>.yaml builds the class registered as <name>
        assert target_class(name) is DATASETS.get(name) and DATASETS.get(name).name == name
    for option in (p.stem for p in (REPO / "configs" / "dataset").glob("*.yaml")):
        assert target_class(option) in {DATASETS.get(n) for n in DATASETS.names()}, option


def _one_line_error(ds: ImageFolder) -> str:
    with pytest.raises(DataNotFoundError) as err:
        ds.load(True)
        ds.load(False)
    message = str(err.value)
    assert "\n" not in message
    assert "/train/<class>/<image>" in message and "/val/<class>/<image>" in message  # the expected layout
    assert "dataset.root" in message
    return message


def test_broken_layouts_give_one_line_naming_the_expected_layout(tmp_path):
    assert "No such file" in _one_line_error(ImageFolder(tmp_path / "absent"))

    (tmp_path / "empty" / "train").mkdir(parents=True)
    assert "class folder" in _one_line_error(ImageFolder(tmp_path / "empty"))

    root = fake_data.write_image_folder(tmp_path / "no_val", num_classes=2, per_class_train=2, per_class_test=1)
    shutil.rmtree(root / "val")
    assert "val" in _one_line_error(ImageFolder(root))

    root = fake_data.write_image_folder(tmp_path / "extra", num_classes=2, per_class_train=2, per_class_test=1)
    (root / "val" / "class_99").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "class_99" / "0.png")
    assert "class_99" in _one_line_error(ImageFolder(root))

    root = fake_data.write_image_folder(tmp_path / "hollow", num_classes=2, per_class_train=2, per_class_test=1)
    for png in (root / "train" / "class_01").iterdir():
        png.unlink()
    assert "class_01" in _one_line_error(ImageFolder(root))


def test_a_class_without_test_images_is_allowed(tmp_path):
    root = fake_data.write_image_folder(tmp_path, num_classes=3, per_class_train=2, per_class_test=1)
    shutil.rmtree(root / "val" / "class_01")
    test = ImageFolder(root).load(False)
    assert test.y.tolist() == [0, 2]
