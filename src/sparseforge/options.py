"""Options: the one home of a component's settings.

Every configurable class (an update rule, a method, the sparsity engine) declares its settings
once, as a dataclass next to it, usually its nested ``Options``. From that one declaration:

- the class builds and checks its options (``build_options``): an unknown key or a bad choice is
  one ``ConfigError`` line naming the key, the closest valid key and the allowed values;
- the Hydra schema of its config group is generated (``sparseforge.config.structured``), so a
  YAML file holds only the choices that differ from the defaults, and the printed config tree
  shows every setting with its value.

Plain Python, no torch: a hand-written loop passes the same names as keyword arguments.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from sparseforge.errors import ConfigError

T = TypeVar("T")


def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass (``from __future__ import annotations`` included)."""
    return typing.get_type_hints(cls)


def closest(key: str, candidates) -> str | None:
    match = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return match[0] if match else None


def unknown_key_error(prefix: str, key: str, known) -> ConfigError:
    hint = closest(key, known)
    problem = f"unknown key {key!r}" + (f" (did you mean {hint!r}?)" if hint else "")
    return ConfigError(f"{prefix}.{key}" if prefix else key, problem, ", ".join(sorted(known)))


def build_options(cls: type[T], values: Mapping[str, Any] | None, prefix: str) -> T:
    """``cls(**values)``, with enum strings and nested mappings converted to their field types.

    Every failure is one ConfigError under ``prefix`` (e.g. ``method``, ``sparsity``).
    """
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise unknown_key_error(prefix, key, known)
    types = field_types(cls)
    return cls(**{key: _coerce(f"{prefix}.{key}", types[key], value) for key, value in values.items()})


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Hydra hands enums, DictConfigs and ListConfigs; Python users hand strings and dicts."""
    if value is None:
        return None
    tp = _strip_optional(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        try:
            return tp(getattr(value, "value", value))
        except ValueError:
            raise ConfigError(key, f"unknown value {value!r}", ", ".join(str(m.value) for m in tp)) from None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping) or hasattr(value, "items"):
            return build_options(tp, {str(k): v for k, v in value.items()}, key)
    if typing.get_origin(tp) in (list, tuple) or type(value).__name__ == "ListConfig":
        return [v for v in value] if not isinstance(value, (str, bytes)) else value
    return value


def _strip_optional(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return tp


def check(key: str, ok: bool, problem: str, allowed: str | None = None) -> None:
    """Raise ``ConfigError(key, problem, allowed)`` unless ``ok``: the options' range checks."""
    if not ok:
        raise ConfigError(key, problem, allowed)


def as_plain(options: Any) -> Any:
    """Options as plain Python (enums by value): for checkpoints, summaries and loggers."""
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        return {f.name: as_plain(getattr(options, f.name)) for f in dataclasses.fields(options)}
    if isinstance(options, enum.Enum):
        return options.value
    if isinstance(options, (list, tuple)):
        return [as_plain(v) for v in options]
    if isinstance(options, Mapping):
        return {k: as_plain(v) for k, v in options.items()}
    return options
