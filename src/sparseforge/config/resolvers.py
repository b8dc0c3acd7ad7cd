"""OmegaConf resolvers used by the configs (registered once, before Hydra composes)."""

from __future__ import annotations

from omegaconf import OmegaConf


def first_set(*values):
    """``${sf.or:a,b}``: the first value that is not null."""
    for v in values:
        if v is not None and v != "":
            return v
    return None


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("sf.or"):
        OmegaConf.register_new_resolver("sf.or", first_set)
