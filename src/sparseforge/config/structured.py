"""Hydra schemas generated from the options dataclasses that own the settings.

A component declares its settings once (``sparseforge.options``); this module turns that
declaration into a structured config stored in Hydra's ConfigStore as ``schema/<group>/<name>``.
A YAML option of the group extends it (``defaults: [/schema/<group>/<name>@_here_, _self_]``),
so composing rejects a wrong type or an unknown key before any work starts, and the YAML holds
only what differs from the defaults.

OmegaConf reads the annotations at runtime and accepts ``Optional``/``List``/``Dict``, enums,
dataclasses and ``Any``; annotations written in today's syntax (``int | None``, ``list[str]``,
``Sequence[str]``) are translated here, so option classes need not care.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import types
import typing
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

_SCALARS = (int, float, bool, str, bytes)


def omegaconf_type(tp: Any) -> Any:
    """``tp`` in the subset of typing that OmegaConf's structured configs understand."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = omegaconf_type(rest[0]) if len(rest) == 1 else Any
        return Optional[inner] if type(None) in args else inner
    if origin in (list, tuple, set, collections.abc.Sequence, collections.abc.Iterable):
        item = omegaconf_type(args[0]) if args else Any
        return list[item] if item in _SCALARS or _is_enum(item) else list[Any]
    if origin in (dict, collections.abc.Mapping):
        return dict[str, Any]
    if tp in _SCALARS or tp is Any or _is_enum(tp):
        return tp
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return schema_of(tp)
    return Any


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


_SCHEMAS: dict[type, type] = {}


def schema_of(
    options: type | tuple[type, ...],
    target: str | None = None,
    extra: dict[str, tuple[Any, Any]] | None = None,
    defaults: dict[str, Any] | None = None,
    name: str | None = None,
    exclude: tuple[str, ...] = (),
) -> type:
    """A structured-config dataclass with the fields of ``options`` (one dataclass or several,
    merged in order; same names, types and defaults), ``_target_`` when given, ``extra`` fields
    (``name: (type, default)``), and ``defaults`` replacing field defaults (e.g. ``"${seed}"``);
    fields named in ``exclude`` are left out."""
    classes = options if isinstance(options, tuple) else (options,)
    key = (classes, target, repr(extra), repr(defaults), name, exclude)
    if key in _SCHEMAS:
        return _SCHEMAS[key]
    fields: dict[str, tuple[str, Any, Any]] = {}
    if target is not None:
        fields["_target_"] = ("_target_", str, dataclasses.field(default=target))
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in exclude:
                continue
            tp = omegaconf_type(hints[f.name])
            fields[f.name] = (f.name, tp, _copy_default(f, tp))
    for key, (tp, default) in (extra or {}).items():
        fields[key] = (key, omegaconf_type(tp), _default(default))
    for key, value in (defaults or {}).items():
        fields[key] = (key, fields[key][1], _default(value))
    name = name or classes[-1].__qualname__.replace(".Options", "").replace(".", "") + "Config"
    schema = dataclasses.make_dataclass(name, list(fields.values()))
    _SCHEMAS[key] = schema
    return schema


def _copy_default(f: dataclasses.Field, tp: Any) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    elif f.default is dataclasses.MISSING:
        return dataclasses.field(default="???")  # OmegaConf's "mandatory" marker
    else:
        value = f.default
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):  # a nested options node
        nested = {} if value is None else _plain_default(value)
        return dataclasses.field(default_factory=lambda: tp(**nested))
    return _default(value)


def _default(value: Any) -> Any:
    value = _plain_default(value)
    if isinstance(value, (list, dict)):
        return dataclasses.field(default_factory=lambda: _plain_default(value))
    return dataclasses.field(default=value)


def _plain_default(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain_default(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain_default(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def store_schema(group: str, name: str, schema: type) -> None:
    ConfigStore.instance().store(group=f"schema/{group}", name=name, node=schema)
