"""Config schemas, resolvers and start-time validation. Import-light: no torch here."""

from __future__ import annotations

import os
from pathlib import Path

from sparseforge.config.resolvers import register_resolvers
from sparseforge.config.schemas import register_schemas

CONFIG_DIR_ENV = "SPARSEFORGE_CONFIG_DIR"


def config_dir() -> str:
    """The ``configs/`` folder: $SPARSEFORGE_CONFIG_DIR, else the one shipped in the package
    (``sparseforge/configs``: in a source checkout a link to the top-level ``configs/``, in an
    installed wheel a copy of it)."""
    env = os.environ.get(CONFIG_DIR_ENV)
    path = Path(env) if env else Path(__file__).resolve().parents[1] / "configs"
    return str(path.resolve())


def register() -> None:
    register_resolvers()
    register_schemas()


register()
