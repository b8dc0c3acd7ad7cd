"""Tiny datasets written in each dataset's real on-disk format, read back by torchvision.

Labels cycle through the classes so every class has examples; pixels are random but seeded,
with a class-dependent offset so that a model can learn something.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np


def _images(n: int, shape: tuple[int, ...], num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    noise = rng.integers(0, 64, size=(n, *shape))
    x = (noise + (labels.reshape(-1, *[1] * len(shape)) * (190 // max(num_classes - 1, 1)))).clip(0, 255)
    return x.astype(np.uint8), labels.astype(np.int64)


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX format: big-endian header (magic 0x0000 08 ndim), dims as uint32, raw uint8."""
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, array.ndim))
        f.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def write_mnist_like(
    root: Path, folder: str = "MNIST", n_train: int = 200, n_test: int = 100, num_classes: int = 10, seed: int = 0
) -> Path:
    """torchvision's layout: ``root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``."""
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        x, y = _images(n, (28, 28), num_classes, s)
        write_idx(raw / f"{split}-images-idx3-ubyte", x)
        write_idx(raw / f"{split}-labels-idx1-ubyte", y)
    return Path(root)


def write_cifar(root: Path, num_classes: int = 10, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """torchvision's pickled batches for CIFAR-10 (5 train batches) or CIFAR-100."""
    root = Path(root)
    xt, yt = _images(n_train, (3, 32, 32), num_classes, seed)
    xv, yv = _images(n_test, (3, 32, 32), num_classes, seed + 1)
    if num_classes == 10:
        base = root / "cifar-10-batches-py"
        base.mkdir(parents=True, exist_ok=True)
        for i, chunk in enumerate(np.array_split(np.arange(n_train), 5), start=1):
            _dump(base / f"data_batch_{i}", {"data": xt[chunk].reshape(len(chunk), -1), "labels": yt[chunk].tolist()})
        _dump(base / "test_batch", {"data": xv.reshape(n_test, -1), "labels": yv.tolist()})
        _dump(base / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    else:
        base = root / "cifar-100-python"
        base.mkdir(parents=True, exist_ok=True)
        _dump(
            base / "train",
            {"data": xt.reshape(n_train, -1), "fine_labels": yt.tolist(), "coarse_labels": (yt // 5).tolist()},
        )
        _dump(
            base / "test",
            {"data": xv.reshape(n_test, -1), "fine_labels": yv.tolist(), "coarse_labels": (yv // 5).tolist()},
        )
        _dump(
            base / "meta",
            {
                "fine_label_names": [f"class{i}" for i in range(100)],
                "coarse_label_names": [f"super{i}" for i in range(20)],
            },
        )
    return root


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_tiny_imagenet(
    root: Path, num_classes: int = 200, per_class_train: int = 2, per_class_val: int = 1, seed: int = 0
) -> Path:
    """The official ``tiny-imagenet-200`` layout (PNG images instead of JPEG)."""
    from PIL import Image

    base = Path(root) / "tiny-imagenet-200"
    wnids = [f"n{10000000 + i:08d}" for i in range(num_classes)]
    (base / "val" / "images").mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    rng = np.random.default_rng(seed)
    lines = []
    for c, wnid in enumerate(wnids):
        img_dir = base / "train" / wnid / "images"
        img_dir.mkdir(parents=True, exist_ok=True)
        for k in range(per_class_train):
            arr = rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
            Image.fromarray(arr).save(img_dir / f"{wnid}_{k}.png")
        for k in range(per_class_val):
            name = f"val_{c}_{k}.png"
            Image.fromarray(rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)).save(base / "val" / "images" / name)
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return Path(root)


def write_emnist_letters(root: Path, n_train: int = 104, n_test: int = 52, seed: int = 0) -> Path:
    """torchvision's EMNIST layout for split 'letters': ``root/EMNIST/raw/emnist-letters-*``,
    labels 1..26 as in the official files."""
    raw = Path(root) / "EMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        x, y = _images(n, (28, 28), 26, s)
        write_idx(raw / f"emnist-letters-{split}-images-idx3-ubyte", x)
        write_idx(raw / f"emnist-letters-{split}-labels-idx1-ubyte", y + 1)
    return Path(root)


def write_image_folder(
    root: Path,
    num_classes: int = 4,
    per_class_train: int = 6,
    per_class_test: int = 3,
    splits: tuple[str, str] = ("train", "val"),
    seed: int = 0,
) -> Path:
    """torchvision's ImageFolder layout, ``root/<split>/<class>/<image>.png``, with RGB PNGs of
    varied sizes (so that resizing and cropping are exercised) whose colour depends on the class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, per_class in zip(splits, (per_class_train, per_class_test), strict=True):
        for c in range(num_classes):
            folder = Path(root) / split / f"class_{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                h, w = rng.integers(36, 60, size=2)
                arr = rng.integers(0, 64, size=(h, w, 3)) + np.array([60 * c % 192, 40 * c % 192, 100])
                Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(folder / f"{k}.png")
    return Path(root)


def write_mini_imagenet(
    root: Path, num_classes: int = 100, per_class_train: int = 2, per_class_test: int = 1, seed: int = 0
) -> Path:
    """CL-with-DST's miniImageNet-100 folders: ``miniImageNet100/{train,validation}/<class>/*.jpg``
    (non-square JPEGs, as in the raw dump; the dataset resizes and crops them)."""
    from PIL import Image

    base = Path(root) / "miniImageNet100"
    rng = np.random.default_rng(seed)
    for c in range(num_classes):
        wnid = f"n{20000000 + c:08d}"
        for split, n in (("train", per_class_train), ("validation", per_class_test)):
            folder = base / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                arr = rng.integers(0, 64, size=(40, 48, 3), dtype=np.uint8) + np.uint8(c * 190 // num_classes)
                Image.fromarray(arr).save(folder / f"{wnid}_{k}.jpg")
    return Path(root)
