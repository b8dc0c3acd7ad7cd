"""Datasets (real on-disk formats read by torchvision's classes, standard normalisation and
augmentation) and models (registry, CIFAR ResNet, timm), without training."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.data import CIFAR10, CIFAR100, MNIST, Digits, EMNISTLetters, FashionMNIST, TinyImageNet
from sparseforge.data.transforms import DeviceTransform, RandomCropFlip, split_transforms
from sparseforge.errors import ConfigError, DataNotFoundError
from sparseforge.models import create_model
from tests.helpers import fake_data
from tests.helpers.config import compose_config


def _normalised_stats(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    x = dataset.load(train=True).x
    z = DeviceTransform(dataset.mean, dataset.std)(x, train=False)
    return z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))


def test_digits_normalisation_matches_its_data():
    mean, std = _normalised_stats(Digits())
    assert torch.allclose(mean, torch.zeros(1), atol=0.02) and torch.allclose(std, torch.ones(1), atol=0.02)


def test_mnist_normalisation_matches_the_real_data(full_mnist_dir):
    mean, std = _normalised_stats(MNIST(full_mnist_dir, download=False))
    assert torch.allclose(mean, torch.zeros(1), atol=0.01) and torch.allclose(std, torch.ones(1), atol=0.01)


def test_digits_split_is_fixed_and_stratified():
    d = Digits()
    train, test = d.load(True), d.load(False)
    assert len(train) + len(test) == 1797 and abs(len(test) - 0.25 * 1797) < 1
    assert torch.equal(Digits().load(True).y, train.y)  # the same split every time
    assert torch.bincount(test.y, minlength=10).min() >= 40  # every class in the test split
    assert train.x.dtype == torch.uint8 and train.x.shape[1:] == (1, 8, 8)


@pytest.mark.parametrize(
    "cls, writer, n_classes, shape",
    [
        (MNIST, lambda r: fake_data.write_mnist_like(r, "MNIST"), 10, (1, 28, 28)),
        (FashionMNIST, lambda r: fake_data.write_mnist_like(r, "FashionMNIST"), 10, (1, 28, 28)),
        (EMNISTLetters, fake_data.write_emnist_letters, 26, (1, 28, 28)),
        (CIFAR10, lambda r: fake_data.write_cifar(r, 10), 10, (3, 32, 32)),
        (CIFAR100, lambda r: fake_data.write_cifar(r, 100, n_train=300, n_test=200), 100, (3, 32, 32)),
    ],
)
def test_datasets_read_their_real_file_formats(cls, writer, n_classes, shape, data_dir):
    writer(data_dir)
    kwargs = {"verify_checksums": False} if cls in (CIFAR10, CIFAR100) else {}
    ds = cls(data_dir, download=False, **kwargs)
    train, test = ds.load(True), ds.load(False)
    assert ds.num_classes == n_classes and (ds.in_chans, ds.image_size, ds.image_size) == shape
    assert train.x.dtype == torch.uint8 and train.x.shape[1:] == shape and test.x.shape[1:] == shape
    assert set(train.y.tolist()) == set(range(n_classes))  # labels 0..C-1 (EMNIST's 1..26 shifted)


def test_cifar_checksums_are_verified_unless_switched_off(data_dir):
    fake_data.write_cifar(data_dir, 10)
    with pytest.raises(DataNotFoundError, match="verify_checksums=false"):
        CIFAR10(data_dir, download=False).load(True)
    assert len(CIFAR10(data_dir, download=False, verify_checksums=False).load(True)) == 200


def test_tiny_imagenet_maps_validation_annotations_to_classes(data_dir):
    fake_data.write_tiny_imagenet(data_dir, per_class_train=1, per_class_val=1)
    ds = TinyImageNet(data_dir, download=False)
    val = ds.load(train=False)
    # the writer names val image k of class c "val_c_k.png" and lists it under wnid c, and
    # ImageFolder sorts by path, so label == c in order.
    assert val.y.tolist() == sorted(range(200), key=lambda c: f"n{10000000 + c:08d}/val_{c}_0.png")
    assert ds.load(train=True).y.tolist() == list(range(200))
    assert val.x.shape[1:] == (3, 64, 64)
    # decoded once, then read from the cache
    assert (data_dir / "tiny-imagenet-200" / "cache_val.pt").exists()
    assert torch.equal(TinyImageNet(data_dir, download=False).load(train=False).x, val.x)


def test_missing_data_names_the_files_and_the_fix(data_dir):
    with pytest.raises(DataNotFoundError) as err:
        MNIST(data_dir, download=False).load(True)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(data_dir / "MNIST" / "raw") in msg and "train-images-idx3-ubyte" in msg
    assert "SPARSEFORGE_DATA_DIR" in msg and "download" in msg
    assert list(data_dir.iterdir()) == []  # no empty folders left behind


def _crops(img: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Every output the standard CIFAR augmentation may give for ``img`` (C x H x W)."""
    _, h, w = img.shape
    padded = nn.functional.pad(img, (pad, pad, pad, pad))
    out = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            out += [crop, crop.flip(2)]
    return out


def configured_transforms(name: str) -> tuple:
    """The (per-image, batched) training transforms of configs/dataset/<name>.yaml, instantiated."""
    from hydra.utils import instantiate

    node = compose_config([f"dataset={name}"]).dataset
    return split_transforms(instantiate(node.train_transform), "dataset.train_transform")


def test_cifar_and_tiny_imagenet_train_with_the_batched_crop_pad4_plus_hflip():
    for name in ("cifar10", "cifar100", "tiny_imagenet"):
        per_image, batched = configured_transforms(name)
        assert per_image is None  # the in-memory fast path
        assert isinstance(batched, RandomCropFlip) and (batched.padding, batched.hflip) == (4, True)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_cifar_augmentation_is_random_crop_pad4_plus_hflip(seed):
    torch.manual_seed(seed)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    identity = DeviceTransform((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), RandomCropFlip(padding=4, hflip=True))
    out = identity(x, train=True)
    assert out.shape == (8, 3, 32, 32)
    for img, aug in zip(x.float() / 255, out, strict=True):
        assert any(torch.equal(aug, c) for c in _crops(img, 4))


def test_cifar_augmentation_uses_every_offset_and_both_flips():
    torch.manual_seed(0)
    x = torch.randint(1, 256, (300, 3, 32, 32), dtype=torch.uint8)  # no zeros: padding is visible
    out = DeviceTransform((0.0,) * 3, (1.0,) * 3, RandomCropFlip(4, True))(x, train=True)
    seen = []
    for img, aug in zip(x.float() / 255, out, strict=True):
        matches = [k for k, c in enumerate(_crops(img, 4)) if torch.equal(aug, c)]
        assert len(matches) == 1
        k = matches[0]
        seen.append((k // 2 // 9, k // 2 % 9, k % 2))  # (dy, dx, flipped)
    assert {dy for dy, _, _ in seen} == set(range(9)) and {dx for _, dx, _ in seen} == set(range(9))
    flips = sum(f for _, _, f in seen)
    assert 0.35 < flips / len(seen) < 0.65


def test_mnist_like_data_is_not_augmented():
    for name in ("mnist", "fashion_mnist", "emnist_letters", "digits"):
        assert configured_transforms(name) == (None, None)
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    t = DeviceTransform(MNIST.mean, MNIST.std)
    assert torch.equal(t(x, train=True), t(x, train=False))


# -- models -------------------------------------------------------------------------------------------
def test_resnet18_cifar_has_the_cifar_stem_and_a_width_option():
    full = create_model("resnet18_cifar", num_classes=10, in_chans=3, image_size=32)
    assert full.conv1.kernel_size == (3, 3) and full.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in full.modules())
    assert sum(p.numel() for p in full.parameters()) == 11_173_962  # the standard CIFAR ResNet-18
    reduced = create_model("resnet18_cifar", num_classes=100, in_chans=3, image_size=32, width=20)
    assert reduced.conv1.out_channels == 20 and reduced.fc.in_features == 160
    assert reduced(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "resnet18_cifar"])
@pytest.mark.parametrize("classes, chans, size", [(10, 1, 8), (26, 1, 28), (100, 3, 32), (200, 3, 64)])
def test_registry_models_take_classes_and_channels_from_the_dataset(name, classes, chans, size):
    kwargs = {"width": 8} if name == "resnet18_cifar" else {}
    model = create_model(name, num_classes=classes, in_chans=chans, image_size=size, **kwargs)
    assert model(torch.randn(2, chans, size, size)).shape == (2, classes)


def test_timm_vit_tiny_at_32px_with_patch_4():
    vit = create_model(
        "vit_tiny_patch16_224", num_classes=10, in_chans=3, image_size=32, kwargs={"img_size": 32, "patch_size": 4}
    )
    assert vit.patch_embed.num_patches == 64
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_timm_resnet18_by_name_with_one_channel():
    model = create_model("resnet18", num_classes=26, in_chans=1, image_size=28)
    assert model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 26)


def test_unknown_model_names_the_key_and_the_choices():
    with pytest.raises(ConfigError) as err:
        create_model("resnet_does_not_exist", num_classes=10, in_chans=3, image_size=32)
    assert "model.name" in str(err.value) and "small_cnn" in str(err.value)


def test_an_in_memory_dataset_keeps_its_stored_image_size():
    assert CIFAR10("/x", download=False, image_size=32).image_size == 32
    with pytest.raises(ConfigError) as err:
        CIFAR10("/x", download=False, image_size=224)
    message = str(err.value)
    assert message.startswith("config error: dataset.image_size: cifar10 stores 32x32") and "\n" not in message


def test_cifar_std_can_be_replaced_and_the_datamodule_normalises_with_it(data_dir):
    from sparseforge.continual.scenarios import ClassIncremental
    from sparseforge.lightning.datamodule import ContinualDataModule

    sharp_std = (0.2023, 0.1994, 0.2010)  # SHARP's (and many CIFAR-10 repositories') constants
    assert CIFAR10(data_dir, download=False).std == (0.2470, 0.2435, 0.2616)
    dataset = CIFAR10(data_dir, download=False, std=list(sharp_std))
    assert dataset.std == sharp_std and CIFAR10.std == (0.2470, 0.2435, 0.2616)  # the class keeps its own
    transform = ContinualDataModule(dataset, ClassIncremental()).transform
    white = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    expected = (1.0 - torch.tensor(dataset.mean)) / torch.tensor(sharp_std)
    assert torch.allclose(transform(white, train=False)[0, :, 0, 0], expected)
    with pytest.raises(ConfigError, match="dataset.std"):
        CIFAR10(data_dir, download=False, std=[0.2, 0.2])
