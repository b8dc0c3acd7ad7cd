"""Compose the real config in-process, as ``python train.py`` would, for scripts and tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict


def compose_run_config(overrides: Sequence[str] = (), output_dir: str | Path | None = None) -> DictConfig:
    """``configs/train.yaml`` plus ``overrides``; with ``output_dir``, the run directory.

    The Hydra runtime config is installed (interpolations such as ``${hydra:...}`` resolve) and
    then dropped from the returned config, which ``sparseforge.train.build``/``train`` accept.
    """
    from sparseforge.config import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    if output_dir is not None:
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg
