"""Lightning's SLURM environment, built from config, only where a SLURM job step runs."""

from __future__ import annotations

import signal

from lightning.fabric.plugins.environments import SLURMEnvironment

from sparseforge.errors import ConfigError


def slurm_environment(auto_requeue: bool = True, requeue_signal: str = "SIGUSR1") -> SLURMEnvironment | None:
    """``SLURMEnvironment(auto_requeue, requeue_signal)`` inside a SLURM job step, else None.

    Outside SLURM (a laptop, a test) there is nothing to requeue, and the environment would fail
    on missing SLURM variables. Lightning only treats a process as a SLURM one when srun started
    it (``SLURMEnvironment.detect``); slurm/array.sbatch and submitit both use srun.
    """
    signum = getattr(signal, str(requeue_signal), None)
    if not isinstance(signum, signal.Signals) or not str(requeue_signal).startswith("SIG"):
        raise ConfigError(
            "slurm_environment.requeue_signal", f"unknown signal {requeue_signal!r}", "SIGUSR1, SIGUSR2, ..."
        )
    if not SLURMEnvironment.detect():
        return None
    return SLURMEnvironment(auto_requeue=bool(auto_requeue), requeue_signal=signum)
