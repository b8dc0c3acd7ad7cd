"""Writing run files so that a kill or a full disk never leaves a half-written one.

Every file is written to a temporary file beside its target (``.<name>.tmp-<pid>``: the same
filesystem, so the final rename is atomic and nothing is written twice), then renamed onto it.
On any failure the temporary file is removed at once (on a full disk that often frees the room
the failure summary needs), and a full disk becomes one :class:`DiskFullError` naming the target.
A process killed while writing leaves its temporary file; the next run in that directory removes
the ones whose process is dead (:func:`remove_stale_temp_files`).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from sparseforge.errors import DiskFullError

# ``.summary.json.tmp-123`` (and ``last.ckpt.tmp-123``, the name earlier versions used)
_TEMP_NAME = re.compile(r"^\.?.+\.tmp-(?P<pid>\d+)$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return _jsonable(value.item())
        except (ValueError, RuntimeError):
            pass
    return value


def temp_path_for(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def open_temp_file(path: Path) -> BinaryIO:
    """Open the temporary file ``path`` for writing (unbuffered: a full disk fails the write
    that hit it, not a later flush)."""
    return open(path, "wb", buffering=0)


class _RecordingWriter:
    """A file whose write errors are kept: ``torch.save`` turns an OSError raised by ``write``
    into an opaque RuntimeError, and the errno is what tells a full disk apart."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def is_disk_full(exc: BaseException | None) -> bool:
    """True when ``exc``, or an exception it was raised from, is a full disk or a used-up quota."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextmanager
def replacing(path: str | os.PathLike, rename: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file that, once the block ends without an error, replaces ``path``
    (``rename=False``: stays complete at ``temp_path_for(path)``, for the caller to rename).

    On an error the partial file is removed first; a full disk is re-raised as DiskFullError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        file = _RecordingWriter(open_temp_file(tmp))
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(path) from exc
        raise
    try:
        yield file
        file.close()
        if rename:
            os.replace(tmp, path)
    except BaseException as exc:
        try:
            file.close()
        except OSError:
            pass
        tmp.unlink(missing_ok=True)
        if is_disk_full(file.error) or is_disk_full(exc):
            raise DiskFullError(path) from exc
        raise


def atomic_write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write JSON to a temporary file, then rename: readers never see half a file."""
    text = json.dumps(_jsonable(data), indent=2, sort_keys=False, default=str) + "\n"
    with replacing(path) as file:
        file.write(text.encode())


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temp_files(folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Remove the temporary files in ``folders`` whose writing process is dead; return them.

    Only for folders this process owns (the run directory it holds the lock of): a live process
    may be writing its own temporary files, so those are left alone.
    """
    removed = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            match = _TEMP_NAME.match(path.name)
            if match is None or not path.is_file():
                continue
            pid = int(match["pid"])
            if pid != os.getpid() and not pid_alive(pid):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
