"""Compose the real config (configs/train.yaml) the way the CLI does, for in-process tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, open_dict

from sparseforge.compose import compose_run_config


def compose_config(overrides: Sequence[str] = (), output_dir: str | Path | None = None) -> DictConfig:
    """``configs/train.yaml`` plus ``overrides``, with the run directory set to ``output_dir``
    (and the log directory to its parent), printing no config tree."""
    cfg = compose_run_config(overrides, output_dir)
    with open_dict(cfg):
        if output_dir is not None:
            cfg.paths.log_dir = str(Path(output_dir).parent)
        cfg.print_config = False
    return cfg
