"""Expand a sweep into its points and check every point before anything is submitted.

Both SLURM paths use this: the submitit launcher (``hardware=slurm``) and ``sparseforge-sweep
plan`` (the sbatch array). The expansion is Hydra's own: its override parser and the basic
sweeper's cartesian product, so ``a=1,2 b=range(3)`` means what it means to ``python train.py -m``,
and the axes a config declares in ``hydra.sweeper.params`` (a study's arms and seeds) come first,
as the basic sweeper puts them.
Each point is composed with the real config and checked (``config/validate.py``), its directory
is resolved, and a point whose summary.json says completed is marked finished (when it would run
with ``ckpt_path=auto``), so a rerun sweep submits only the rest.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from sparseforge.config.points import completed_summary
from sparseforge.errors import ConfigError, SparseforgeError


class SweepError(SparseforgeError):
    """A sweep that cannot be expanded or has a point that would fail at start."""


class SweepPointFailed(CompactHydraException):
    """One point of a local multirun failed at start (a config error found only when it ran).

    The launcher records it as the point's result and runs the other points; at the end the sweep
    exits 1 and Hydra prints this one line instead of a traceback.
    """


@dataclass
class Point:
    index: int
    overrides: list[str]
    cfg: DictConfig  # composed, with its hydra node
    run_dir: Path
    finished: dict[str, Any] | None  # the summary of a completed run, if any

    @property
    def line(self) -> str:
        """The point as one shell-quoted line of overrides (the sbatch path's file format)."""
        return shlex.join(self.overrides)


def expand(arguments: Sequence[str], config_loader: Any = None) -> list[list[str]]:
    """Hydra's multirun expansion of ``arguments``: one override list per point, in Hydra's order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    for arg in arguments:
        if arg in ("-m", "--multirun") or arg.startswith("--"):
            raise SweepError(f"{arg}: give overrides only (key=value, key=a,b, key=range(0,3), +group=option)")
    from sparseforge.config.overrides import normalise_overrides

    try:
        parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(normalise_overrides(arguments))
        return BasicSweeper.split_arguments(parsed, None)[0]
    except HydraException as exc:  # OverrideParseException, unsupported sweep types
        detail = [ln.strip() for ln in str(exc).strip().splitlines()[:2]]
        raise SweepError(f"cannot parse the sweep: {': '.join(detail)}") from None


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def master_config(config_loader: Any, arguments: Sequence[str], config_name: str = "train") -> DictConfig:
    """The sweep's config as Hydra composes it before expanding it (multirun mode, sweeps left out)."""
    from hydra.types import RunMode

    from sparseforge.config.overrides import normalise_overrides

    expand(arguments, config_loader)  # a sweep that does not parse fails with the parser's message
    try:
        return config_loader.load_configuration(
            config_name, overrides=normalise_overrides(arguments), run_mode=RunMode.MULTIRUN
        )
    except Exception as exc:  # Hydra's composition errors, e.g. an unknown group option
        raise SweepError(f"cannot compose the sweep: {_first_line(exc)}") from None


def sweeper_params(master: DictConfig) -> list[str]:
    """The axes a config declares in ``hydra.sweeper.params`` (a study's arms and seeds), as overrides.

    The basic sweeper puts them before the command line's overrides, and a key given on the
    command line replaces the declared axis (``seed=0`` runs one seed of a study).
    """
    sweeper = master.hydra.sweeper
    declared = sweeper.get("params")
    params = OmegaConf.to_container(declared, resolve=False) if declared else {}
    if params and sweeper.get("_target_") != BASIC_SWEEPER:
        raise SweepError(
            f"hydra.sweeper is {sweeper.get('_target_')}: it picks its points while it runs, so they cannot be "
            "planned ahead; plan grid sweeps (Hydra's basic sweeper) or run this one with python train.py -m"
        )
    return [f"{key}={value}" for key, value in params.items()]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe(overrides: Sequence[str]) -> str:
    return " ".join(overrides) or "(no overrides)"


def check_point(index: int, overrides: Sequence[str], cfg: DictConfig) -> None:
    """The start-time checks of train.py, on a composed point; failures name the point."""
    from sparseforge.config.validate import validate

    try:
        validate(cfg)
    except ConfigError as exc:
        raise SweepError(f"sweep point {index} ({describe(overrides)}): {exc}") from None


def compose_error(index: int, overrides: Sequence[str], exc: BaseException) -> SweepError:
    return SweepError(f"sweep point {index} ({describe(overrides)}): {_first_line(exc)}")


def prepare_run_points(
    arguments: Sequence[str], config_name: str = "train", default_sweep_name: str | None = None
) -> list[Point]:
    """Points of ``arguments`` as single runs (the sbatch path): composed, checked, located.

    Each point runs as ``python train.py <overrides>`` with a ``sweep_name``, so its run
    directory is the one the same point gets in a multirun. The sweep's axes are those of the
    command line and of ``hydra.sweeper.params`` (a study's), in the basic sweeper's order. When
    neither the arguments nor the config name the sweep, ``sweep_name=<default_sweep_name>`` is
    added to every point.
    """
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import setup_globals
    from hydra.types import RunMode

    from sparseforge.compose import register_all
    from sparseforge.config import config_dir

    register_all()
    setup_globals()
    GlobalHydra.instance().clear()
    points = []
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        arguments = list(arguments)
        master = master_config(loader, arguments, config_name)
        if default_sweep_name and not master.get("sweep_name"):
            arguments.append(f"sweep_name={default_sweep_name}")
        arguments = [*sweeper_params(master), *arguments]
        for index, overrides in enumerate(expand(arguments, loader)):
            try:
                cfg = loader.load_configuration(config_name, overrides=list(overrides), run_mode=RunMode.RUN)
                HydraConfig.instance().set_config(cfg)
                run_dir = Path(str(cfg.hydra.run.dir))
            except Exception as exc:  # Hydra's composition and interpolation errors
                raise compose_error(index, overrides, exc) from None
            check_point(index, overrides, cfg)
            # the sbatch path always resumes (array.sbatch adds ckpt_path=auto)
            points.append(Point(index, list(overrides), cfg, run_dir, completed_summary(run_dir)))
    GlobalHydra.instance().clear()
    return points


def prepare_sweep_points(
    config_loader: Any, master_config: DictConfig, job_overrides: Sequence[Sequence[str]]
) -> list[Point]:
    """Points of a multirun batch (the launcher path), composed the way each job will be."""
    points = []
    for index, overrides in enumerate(job_overrides):
        try:
            cfg = config_loader.load_sweep_config(master_config, list(overrides))
            run_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
        except Exception as exc:
            raise compose_error(index, overrides, exc) from None
        check_point(index, overrides, cfg)
        finished = completed_summary(run_dir) if cfg.get("ckpt_path") == "auto" else None
        points.append(Point(index, list(overrides), cfg, run_dir, finished))
    return points


def default_sweep_name(arguments: Sequence[str]) -> str:
    """``sweep-<hash>`` of the sweep's arguments: planning the same sweep again gives the same name."""
    digest = hashlib.sha1("\n".join(sorted(arguments)).encode()).hexdigest()[:8]
    return f"sweep-{digest}"


def objective(cfg: DictConfig, metrics: dict[str, Any]) -> float | None:
    """What a sweep job returns to the sweeper: the metric named by ``optimized_metric``."""
    value = (metrics or {}).get(OmegaConf.select(cfg, "optimized_metric") or "")
    return float(value) if value is not None else None
