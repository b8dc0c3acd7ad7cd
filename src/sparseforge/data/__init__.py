"""Datasets: one file each, read with torchvision's classes (the datamodule is Lightning glue)."""

from sparseforge.data.base import DATA_DIR_ENV, ImageDataset, ImageTensors
from sparseforge.data.cifar import CIFAR10, CIFAR100
from sparseforge.data.digits import Digits
from sparseforge.data.mini_imagenet import MiniImageNet
from sparseforge.data.mnist import MNIST, EMNISTLetters, FashionMNIST
from sparseforge.data.tiny_imagenet import TinyImageNet

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "DATA_DIR_ENV",
    "Digits",
    "EMNISTLetters",
    "FashionMNIST",
    "ImageDataset",
    "ImageTensors",
    "MNIST",
    "MiniImageNet",
    "TinyImageNet",
]
