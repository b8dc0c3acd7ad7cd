"""Dataset registry (the project's ``Registry``, as for models): each dataset class registers under
the name of its config option, ``configs/dataset/<name>.yaml``, whose ``_target_`` is the class."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sparseforge.registry import Registry

DATASETS: Registry[type] = Registry("dataset", "dataset")

D = TypeVar("D", bound=type)


def register_dataset(name: str) -> Callable[[D], D]:
    """Class decorator: register a dataset under ``name``, which also becomes its ``name``."""

    def deco(cls: D) -> D:
        cls.name = name
        return DATASETS.register(name)(cls)

    return deco
