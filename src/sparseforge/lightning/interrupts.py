"""How a run stopped by a signal ends: ``interrupted`` (it resumes with ckpt_path=auto), and a
non-zero exit status, 128 + the signal as shells report it (SIGTERM 143, SIGINT 130).

Lightning turns SIGTERM into ``SIGTERMException``, a ``SystemExit`` without a code, which Python
reports as success: a preempted run would look finished to ``&&`` chains, wrapper scripts and
SLURM's accounting. Ctrl-C becomes ``sys.exit(1)`` inside Lightning.
"""

from __future__ import annotations

import signal

from lightning.pytorch.utilities.exceptions import SIGTERMException


def is_interruption(exc: BaseException) -> bool:
    return isinstance(exc, (SystemExit, KeyboardInterrupt))


def exit_code_for(exc: BaseException) -> int | None:
    """The exit status a signal-stopped run ends with; None for anything else."""
    if isinstance(exc, SIGTERMException):
        return 128 + signal.SIGTERM
    if isinstance(exc, KeyboardInterrupt) or (
        isinstance(exc, SystemExit) and isinstance(exc.__context__, KeyboardInterrupt)
    ):
        return 128 + signal.SIGINT
    return None
