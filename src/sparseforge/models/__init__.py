"""Models: a registry (``create_model``) with the MLP, the small CNN, the CIFAR ResNet and timm."""

from sparseforge.models import mlp, resnet_cifar, sharp, small_cnn  # noqa: F401  (register the models)
from sparseforge.models.registry import MODELS, create_model, register_model

__all__ = ["MODELS", "create_model", "register_model"]
