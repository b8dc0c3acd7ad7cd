"""The composition root: registering every component, and composing the real config in-process.

Importing a method, an update rule, a model or a dataset registers it by name and stores the
Hydra schema generated from its ``Options`` (``sparseforge.registry``), so ``configs/`` can
refer to ``schema/<group>/<name>``. ``register_all()`` runs before anything composes a config:
``train.py``, the sweep tools, and ``compose_run_config`` (scripts and tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

_REGISTERED = False


def register_all() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    import sparseforge.methods  # noqa: F401  (methods and their schemas)
    import sparseforge.models  # noqa: F401
    from sparseforge.lightning.sparsity_callback import register_sparsity_schemas

    register_sparsity_schemas()  # one schema per update rule, once every rule has registered
    _REGISTERED = True


def compose_run_config(overrides: Sequence[str] = (), output_dir: str | Path | None = None) -> DictConfig:
    """``configs/train.yaml`` plus ``overrides``; with ``output_dir``, the run directory.

    The Hydra runtime config is installed (interpolations such as ``${hydra:...}`` resolve) and
    then dropped from the returned config, which ``sparseforge.train.build``/``train`` accept.
    """
    from sparseforge.config import config_dir
    from sparseforge.config.overrides import normalise_overrides

    register_all()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=normalise_overrides(overrides), return_hydra_config=True)
    if output_dir is not None:
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg
