"""A CSV log (``csv/metrics.csv``) whose rows after a resume are those of an uninterrupted run.

Lightning's CSV writer deletes an existing metrics.csv at start. Here a resumed run keeps the
rows logged before the checkpoint it resumes from, and logs the rest as the uninterrupted run did:

- every checkpoint records the log's length, after writing the rows logged so far to disk
  (``CSVLogPosition``): a resume keeps that many rows, in their order;
- Lightning logs some rows just after a checkpoint (an epoch's aggregated metrics such as
  ``train/acc`` and the task loop's ``cl/*``; a step's metrics), with a step older than the
  checkpoint's, and a resume does not log them again: those are kept too. They are on disk
  before the checkpoint is (Lightning writes them at once, and ``checkpoint_io`` puts a
  checkpoint in place only at the next batch or epoch);
- a row a kill cut in half (no line end) is dropped; a new column rewrites the file atomically.

A fresh run in the same directory replaces the old rows at its first save.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from sparseforge.utils.io import replacing


def _complete_rows(path: str) -> list[dict[str, str]]:
    """The rows of a CSV file, without a last line a kill left unterminated, and without empty cells."""
    with open(path, newline="") as file:
        text = file.read()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return [{k: v for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(io.StringIO(text))]


def _step(row: dict[str, Any]) -> int | None:
    try:
        return int(float(row["step"]))
    except (KeyError, TypeError, ValueError):
        return None


def rows_to_keep(previous: list[dict[str, Any]], step: int, rows: int | None) -> list[dict[str, Any]]:
    """The rows of the log a run resumed at ``step`` keeps (``rows``: the log's length at that
    checkpoint; None for checkpoints that do not record it)."""
    before = [r for r in previous[rows or 0 :] if (s := _step(r)) is not None and s < step]
    return (previous[:rows] if rows is not None else []) + before


class _ResumableWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:  # called by Lightning's __init__: read, do not delete
        self._previous = _complete_rows(self.metrics_file_path) if self._fs.isfile(self.metrics_file_path) else None
        self._kept: list[dict[str, Any]] | None = None
        self.rows_logged = 0

    def resume_at(self, step: int, rows: int | None) -> None:
        self._kept = rows_to_keep(self._previous or [], step, rows)
        self.rows_logged = len(self._kept)

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics_dict, step)
        self.rows_logged += 1

    def save(self) -> None:
        if self._previous is not None:  # the first save: the kept rows (if resuming), then the new ones
            if self._kept is None and not self.metrics:
                return  # nothing logged yet: the old file stays until there is
            rows, self.metrics_keys = (self._kept or []) + self.metrics, []
            self._previous = self._kept = None
            self._record_keys(rows)
            self._write(rows)
            self.metrics = []
            return
        if not self.metrics:
            return
        new_column = self._record_keys(self.metrics)
        if not self._fs.isfile(self.metrics_file_path):
            self._write(self.metrics)
        elif new_column:  # the header changes: all rows again
            self._write(_complete_rows(self.metrics_file_path) + self.metrics)
        else:
            with open(self.metrics_file_path, "a", newline="") as file:
                csv.DictWriter(file, fieldnames=self.metrics_keys).writerows(self.metrics)
        self.metrics = []

    def _record_keys(self, rows: list[dict[str, Any]]) -> bool:
        new = set().union(*rows) - set(self.metrics_keys)
        self.metrics_keys = sorted([*self.metrics_keys, *new])
        return bool(new)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(rows)
        with replacing(self.metrics_file_path) as file:
            file.write(text.getvalue().encode())


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSVLogger whose metrics.csv survives a resume (``ckpt_path=auto``) and a kill.
    Local paths only."""

    _resume: tuple[int, int | None] | None = None

    def resume_at(self, step: int, rows: int | None) -> None:
        """Continue the log of a run resumed from the checkpoint of global step ``step``, which
        recorded the log's length ``rows``."""
        self._resume = (int(step), rows)
        if self._experiment is not None:
            self._experiment.resume_at(*self._resume)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(log_dir=self.log_dir)
            if self._resume is not None:
                self._experiment.resume_at(*self._resume)
        return self._experiment


def _csv_loggers(trainer: pl.Trainer) -> list[CSVLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)]


class CSVLogPosition(pl.Callback):
    """Writes each CSV log to disk and records its length in every checkpoint (rank 0)."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if not trainer.is_global_zero:
            return
        positions = []
        for logger in _csv_loggers(trainer):
            logger.save()
            positions.append(logger.experiment.rows_logged)
        checkpoint["csv_log_rows"] = positions


def continue_logs_from(loggers, step: int | None, rows: list[int] | None = None) -> None:
    """Tell the CSV loggers where a resumed run picks up: its checkpoint's global step and the
    length each log had then (``CSVLogPosition``)."""
    if step is None:
        return
    for i, logger in enumerate(lg for lg in loggers if isinstance(lg, CSVLogger)):
        logger.resume_at(step, rows[i] if rows is not None and i < len(rows) else None)
