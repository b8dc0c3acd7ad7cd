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


def defer_requeue_signal(trainer, request: Callable[[Callable[[], None]], None]) -> bool:
    """Route Lightning's SLURM requeue handler through ``request`` instead of running it at once.

    Lightning's handler saves an HPC checkpoint and runs ``scontrol requeue`` inside the signal
    handler, i.e. at whatever point of a training step the signal lands, so that checkpoint can
    hold a half-done step. Here the signal only files a request; the caller runs the handler at
    its next safe point (after a whole step), right after saving an exact ``last.ckpt`` there.
    Only for a single process: under DDP every rank would have to reach the same safe point, so
    Lightning's own handling stays. Returns whether the handler was rerouted.
    """
    # Where Lightning's signal connector itself looks (a single-device strategy has no environment).
    environment = trainer._accelerator_connector.cluster_environment
    if not isinstance(environment, SLURMEnvironment) or not environment.auto_requeue or trainer.world_size > 1:
        return False
    signum = environment.requeue_signal
    handler = signal.getsignal(signum)
    if not callable(handler) or threading.current_thread() is not threading.main_thread():
        return False
    # In the handler only a list append (atomic): no I/O, no collective, no state change.
    signal.signal(signum, lambda sig, frame: request(lambda: handler(sig, frame)))
    return True
