"""Model registry (timm style). Any name not registered here is looked up in timm."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from sparseforge.errors import ConfigError
from sparseforge.models.init import init_scheme, initialise
from sparseforge.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model", "model.name")
register_model = MODELS.register


def create_model(
    name: str,
    num_classes: int,
    in_chans: int,
    image_size: int,
    kwargs: dict[str, Any] | None = None,
    init: str = "default",
    **extra: Any,
) -> nn.Module:
    """Build ``name`` for a dataset with ``num_classes`` classes of ``in_chans`` x ``image_size``^2.

    ``kwargs`` (and any extra keyword) go to the model's constructor; for timm models they go to
    ``timm.create_model`` (e.g. ``img_size=32, patch_size=4`` for a ViT on CIFAR). ``init``
    re-initialises the weights: ``default`` | ``xavier`` | ``kaiming`` (``models/init.py``).
    """
    options = {**(kwargs or {}), **extra}
    scheme = init_scheme(init)  # a bad name fails before the model is built
    if name in MODELS:
        model = MODELS.get(name)(num_classes=num_classes, in_chans=in_chans, image_size=image_size, **options)
        return initialise(model, scheme)
    import timm

    if not timm.is_model(name):
        raise ConfigError(
            "model.name",
            f"{name!r} is neither a sparseforge model nor a timm model",
            ", ".join(MODELS.names()) + ", or any name in timm.list_models()",
        )
    return initialise(timm.create_model(name, num_classes=num_classes, in_chans=in_chans, **options), scheme)
