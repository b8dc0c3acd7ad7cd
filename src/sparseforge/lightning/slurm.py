"""Lightning's SLURM environment, built from config, only where a SLURM job step runs."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

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


def defer_requeue_signal(trainer, request: Callable[[], None]) -> Callable[[], None] | None:
    """Route Lightning's SLURM requeue signal to ``request`` and hand its handler to the caller.

    Lightning's handler saves an HPC checkpoint and runs ``scontrol requeue`` inside the signal
    handler, i.e. at whatever point of a training step the signal lands, so that checkpoint can
    hold a half-done step; under DDP each rank would enter the checkpoint's barrier at its own
    point, possibly while the others wait in a gradient all-reduce. Here the signal only calls
    ``request``; the caller runs the returned handler at its next safe point (after a whole step,
    on every rank at the same step), right after saving an exact ``last.ckpt`` there. Returns
    None where Lightning does not requeue (no SLURM, auto-requeue off, not the main thread).
    """
    # Where Lightning's signal connector itself looks (a single-device strategy has no environment).
    environment = trainer._accelerator_connector.cluster_environment
    if not isinstance(environment, SLURMEnvironment) or not environment.auto_requeue:
        return None
    signum = environment.requeue_signal
    handler = signal.getsignal(signum)
    if not callable(handler) or threading.current_thread() is not threading.main_thread():
        return None
    signal.signal(signum, lambda sig, frame: request())
    return lambda: handler(signum, None)
