"""Datasets: one file each, read with torchvision's classes (the datamodule is Lightning glue).

Every module of this package is imported here, so each ``@register_dataset`` runs and
``DATASETS`` lists them all: adding a dataset is its module plus ``configs/dataset/<name>.yaml``.
"""

import importlib
import pkgutil

from sparseforge.data.base import DATA_DIR_ENV, ImageDataset, ImageSplit, ImageTensors
from sparseforge.data.cifar import CIFAR10, CIFAR100
from sparseforge.data.cub import CUB200
from sparseforge.data.digits import Digits
from sparseforge.data.files import ImageFiles, ImageFilesDataset
from sparseforge.data.image_folder import ImageFolder
from sparseforge.data.mini_imagenet import MiniImageNet
from sparseforge.data.mnist import MNIST, EMNISTLetters, FashionMNIST
from sparseforge.data.registry import DATASETS, register_dataset
from sparseforge.data.tiny_imagenet import TinyImageNet

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "CUB200",
    "DATASETS",
    "DATA_DIR_ENV",
    "Digits",
    "EMNISTLetters",
    "FashionMNIST",
    "ImageDataset",
    "ImageFiles",
    "ImageFilesDataset",
    "ImageFolder",
    "ImageSplit",
    "ImageTensors",
    "MNIST",
    "MiniImageNet",
    "TinyImageNet",
    "register_dataset",
]
