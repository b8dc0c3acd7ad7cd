"""Checks of the run directory before Hydra creates it (a Hydra callback, configs/hydra/default.yaml).

Hydra makes the run directory and writes ``.hydra/`` into it before the training code starts, so
a run name that leaves ``outputs/``, an output folder under a file or on a read-only filesystem,
and a run directory another live process writes would otherwise fail in Hydra's own code (a
chain of tracebacks) or overwrite the other run's files. Each is one ``error:`` line, exit 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sparseforge.errors import ConfigError, SparseforgeError


def check_writable(folder: Path, key: str) -> None:
    """``folder`` can be created (or exists as a folder) and written to."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(key, f"cannot create {folder}: {existing} is a file, not a folder")
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise ConfigError(key, f"cannot write outputs to {folder}: {existing} is on a read-only file system")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(key, f"cannot write outputs to {folder}: no write permission on {existing}")


def _fail(exc: SparseforgeError) -> None:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)  # SystemExit: Hydra passes it through without a traceback


class RunDirChecks(Callback):
    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from sparseforge.config.validate import check_run_name
        from sparseforge.utils.run_lock import RunLock, launched_as_rank_zero

        if not launched_as_rank_zero():  # DDP ranks > 0 join the directory rank 0 checked and holds
            return

        try:
            check_run_name(config.get("run_name"))
            run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir")))
            check_writable(run_dir, "paths.log_dir")
            if config.get("run_name") or config.get("sweep_name"):  # a named run: another job may share it
                RunLock.acquire(run_dir)  # held until the process ends; train() finds it held
        except SparseforgeError as exc:
            _fail(exc)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            check_writable(Path(str(OmegaConf.select(config, "hydra.sweep.dir"))), "paths.log_dir")
        except SparseforgeError as exc:
            _fail(exc)
