"""One process per run directory: a lock that a dead process cannot hold.

Two jobs with the same ``run_name`` would write the same checkpoints, CSV log and summary. The
first takes an exclusive ``flock`` on ``<run dir>/.lock`` and writes its PID and host into it;
the second finds the lock taken and refuses at start, naming the holder. The kernel drops the lock
when its process ends, however it ends (SIGKILL included), so a crashed run never blocks its
resume. On a filesystem without ``flock`` support the lock is skipped with a warning, and a
stale run is recognised by a dead PID on this host instead.

The same test tells a run that is really running from one that was killed: a summary that still
says ``running`` while nobody holds the lock reads as ``interrupted`` (:func:`effective_status`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import Any

from sparseforge.errors import RunInUseError
from sparseforge.utils.io import pid_alive

log = logging.getLogger("sparseforge")

LOCK_NAME = ".lock"
_held: dict[Path, RunLock] = {}  # run dirs this process holds: acquiring twice is a no-op


def launched_as_rank_zero() -> bool:
    """Whether this process is (or will be) global rank 0, from what its launcher set before any
    process group exists: torchrun's RANK, Lightning's LOCAL_RANK and NODE_RANK for the processes
    it starts, srun's SLURM_PROCID for one task per rank. Only rank 0 owns the run directory."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"]) == 0
    if int(env.get("LOCAL_RANK", 0)) != 0 or int(env.get("NODE_RANK", 0)) != 0:
        return False
    return int(env.get("SLURM_PROCID", 0)) == 0


def _show(run_dir: Path) -> str:
    """The run directory relative to the current one where it lies inside it (``outputs/NAME``)."""
    try:
        return str(run_dir.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(run_dir)


class RunLock:
    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    @classmethod
    def acquire(cls, run_dir: str | os.PathLike) -> RunLock:
        """Lock ``run_dir`` for this process (creating it), or raise RunInUseError."""
        key = Path(run_dir).resolve()
        if key in _held:
            return _held[key]
        lock = cls(run_dir)
        lock.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(lock.path)
            os.close(fd)
            raise RunInUseError(
                f"{_show(lock.run_dir)} is in use by {holder}: wait for that run to end, or pick another run_name"
            ) from None
        except OSError as exc:  # e.g. a network filesystem mounted without lock support
            log.warning(f"cannot lock {lock.path} ({exc.strerror}): concurrent runs of this name are not detected")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        lock._fd = fd
        _held[key] = lock
        return lock

    def release(self) -> None:
        """Drop the lock. The file stays: removing it would let a third process lock a new file
        while a second still waits on the old one."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        _held.pop(self.run_dir.resolve(), None)


def _read_holder(path: Path) -> str:
    try:
        pid, host = path.read_text().split()[:2]
        return f"PID {pid} on {host}"
    except (OSError, ValueError):
        return "another process"


def is_locked(run_dir: str | os.PathLike) -> bool | None:
    """Whether a live process holds ``run_dir``'s lock; None where locks are not supported."""
    path = Path(run_dir) / LOCK_NAME
    if not path.is_file():
        return False
    if Path(run_dir).resolve() in _held:
        return True
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # also drops the shared lock taken for the test


def effective_status(run_dir: str | os.PathLike, summary: dict[str, Any] | None) -> str | None:
    """The summary's status, with ``running`` read as ``interrupted`` when its process is gone."""
    if summary is None:
        return None
    status = str(summary.get("status", "unknown"))
    if status != "running":
        return status
    locked = is_locked(run_dir)
    if locked is None:  # no locks here: judge by the PID where it ran on this host
        same_host = summary.get("host") == socket.gethostname()
        locked = not (same_host and summary.get("pid") and not pid_alive(int(summary["pid"])))
    return "running" if locked else "interrupted"


def claim_run_dir(run_dir: str | os.PathLike) -> RunLock:
    """Lock ``run_dir`` for this run and clear what killed processes left in it (their temporary
    files). Raises RunInUseError while another live process holds it."""
    from sparseforge.config.points import read_summary
    from sparseforge.utils.io import remove_stale_temp_files

    lock = RunLock.acquire(run_dir)
    run_dir = Path(run_dir)
    removed = remove_stale_temp_files([run_dir, run_dir / "checkpoints"])
    if removed:
        log.info(f"removed {len(removed)} temporary file(s) of killed processes: {', '.join(p.name for p in removed)}")
    previous = read_summary(run_dir)
    if previous and previous.get("status") == "running":  # we hold the lock: its process is gone
        who = f"PID {previous.get('pid')} on {previous.get('host')}" if previous.get("pid") else "its process"
        log.info(f"the previous run in {_show(run_dir)} ({who}) ended without a status: it was interrupted")
    return lock
