"""Checkpoint files that survive kills, full disks and damage, and the choice of what to resume.

- ``AtomicCheckpointIO`` writes each checkpoint to a temporary file beside it and renames it into
  place (``utils/io.replacing``): a kill mid-write leaves the previous file intact, a full disk is
  one line, and nothing goes through the system temp dir (Lightning's own save stages there, which
  writes every checkpoint twice when /tmp is another filesystem). The file a save replaces is
  kept as ``<name>.bak``, so a second good checkpoint is always left (the disk holds two, and a
  third while one is written).
- ``find_resume_checkpoint`` reads the checkpoint to resume from before anything trains. With
  ``ckpt_path=auto`` an unreadable ``last.ckpt`` (truncated or corrupt) falls back to the backup,
  with a warning; without a readable backup it is one line with the way out.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from sparseforge.errors import CheckpointUnreadableError, ConfigError
from sparseforge.utils.io import replacing, temp_path_for

log = logging.getLogger("sparseforge")

LAST = Path("checkpoints") / "last.ckpt"


def backup_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".bak")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO: written beside the target, renamed into place, one backup.

    While training runs (``CheckpointCommits``) the rename waits for the next safe point: the next
    batch or epoch, the end of training or an exception. Lightning logs some rows just after a
    checkpoint (an epoch's aggregated metrics, a step's metrics), and a resume does not log them
    again; once a checkpoint is in place they are on disk, so a kill never loses them. A kill
    before the rename resumes from the checkpoint before, which is as exact, only earlier.
    """

    def __init__(self) -> None:
        super().__init__()
        self.defer = False
        self._pending: list[Path] = []

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if "://" in str(path):  # remote storage: Lightning's fsspec path
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        with replacing(path, rename=False) as file:
            torch.save(checkpoint, file)
        if path not in self._pending:
            self._pending.append(path)
        if not self.defer:
            self.commit()

    def commit(self) -> None:
        """Put the checkpoints written since the last commit in place; the file each one replaces
        becomes its ``.bak`` (two renames: the two are never one file, so damage to one spares
        the other; between the renames a resume finds the backup)."""
        while self._pending:
            path = self._pending.pop(0)
            if path.is_file():
                os.replace(path, backup_path(path))
            os.replace(temp_path_for(path), path)

    def commit_now(self) -> None:
        """Commit, and write every later checkpoint in place at once (the process is about to end)."""
        self.defer = False
        self.commit()

    def teardown(self) -> None:
        self.commit_now()
        super().teardown()


class CheckpointCommits(pl.Callback):
    """Defers ``AtomicCheckpointIO``'s renames to the safe points of training (see there)."""

    def __init__(self, io: AtomicCheckpointIO):
        self.io = io

    def on_train_start(self, trainer, pl_module) -> None:
        self.io.defer = True

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.io.commit()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.io.commit()

    def on_train_end(self, trainer, pl_module) -> None:
        self.io.commit_now()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.io.commit_now()


@dataclass
class ResumePoint:
    path: Path
    global_step: int
    epoch: int
    csv_log_rows: list[int] | None = None  # each CSV log's length when it was saved (csv_log.py)


def read_resume_point(path: Path) -> ResumePoint:
    """Open ``path`` as a Lightning checkpoint (tensors memory-mapped, not read); raise
    CheckpointUnreadableError saying why it cannot be."""
    size = path.stat().st_size
    if size == 0:
        reason = "the file is empty"
    elif not zipfile.is_zipfile(path):
        reason = f"not a complete PyTorch checkpoint archive ({size} bytes)"
    else:
        try:
            ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
            return ResumePoint(
                path, int(ckpt.get("global_step", 0)), int(ckpt.get("epoch", 0)), ckpt.get("csv_log_rows")
            )
        except Exception as exc:  # torch's errors for damaged archives vary by damage
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    raise CheckpointUnreadableError(f"checkpoint {path} is unreadable (truncated or corrupt): {reason}")


def find_resume_checkpoint(setting: str | None, run_dir: Path, tidy: bool = True) -> ResumePoint | None:
    """What a run resumes from: ``ckpt_path`` null (nothing), ``auto`` (the run's last.ckpt, else
    its backup, else nothing) or a file. ``tidy``: move an unreadable last.ckpt aside (rank 0),
    so that the next save does not make it the backup."""
    if setting is None:
        return None
    if setting != "auto":
        path = Path(setting)
        if not path.is_file():
            raise ConfigError("ckpt_path", f"no checkpoint file at {path}", "null, auto, or an existing .ckpt file")
        return _readable(path, "pass ckpt_path=null to start over, or another checkpoint")
    last = Path(run_dir) / LAST
    backup = backup_path(last)
    if not last.is_file():
        return read_resume_point(backup) if backup.is_file() else None
    try:
        return read_resume_point(last)
    except CheckpointUnreadableError as damaged:
        try:
            point = read_resume_point(backup) if backup.is_file() else None
        except CheckpointUnreadableError:
            point = None
        if point is None:
            raise CheckpointUnreadableError(
                f"{damaged}; no readable backup ({backup}) either. To start over: delete it, or pass ckpt_path=null"
            ) from None
        aside = last.with_name(last.name + ".unreadable")
        log.warning(
            f"{damaged}; resuming from the previous checkpoint {backup} (epoch {point.epoch}, step "
            f"{point.global_step}) instead" + (f"; the unreadable file is kept as {aside}" if tidy else "")
        )
        if tidy:
            os.replace(last, aside)
        return point


def _readable(path: Path, way_out: str) -> ResumePoint:
    try:
        return read_resume_point(path)
    except CheckpointUnreadableError as exc:
        raise CheckpointUnreadableError(f"{exc}. To go on: {way_out}") from None
