"""A name -> component registry (timm style), the one registration style of the project.

``@REGISTRY.register("name")`` on a class or factory. Models, datasets, update rules and methods
all register this way; a registered class gets the name as its ``name`` attribute. A registry with a ``schema_group`` also stores the Hydra schema of the
component's config (``schema/<group>/<name>``), generated from its ``Options`` dataclass, so the
options are declared once, next to the component.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from sparseforge.errors import ConfigError

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    def __init__(self, kind: str, config_key: str, schema_group: str | None = None):
        self.kind = kind
        self.config_key = config_key
        self.schema_group = schema_group
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(fn: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = fn
            if isinstance(fn, type):
                fn.name = name  # the registered name is the class's name in configs, logs and errors
            if self.schema_group is not None:
                from sparseforge.config.structured import schema_of, store_schema

                target = f"{fn.__module__}.{fn.__qualname__}"
                wiring = getattr(fn, "config_wiring", None)  # interpolations such as seed: ${seed}
                store_schema(self.schema_group, name, schema_of(fn.Options, target=target, defaults=wiring))
            return fn

        return deco

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(sorted(self._entries))

    def items(self):
        return sorted(self._entries.items())

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(self.config_key, f"unknown {self.kind} {name!r}", ", ".join(self.names())) from None
