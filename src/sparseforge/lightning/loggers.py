"""Loggers: W&B that never prompts, never hangs and resumes the same run after a restart; a CSV log that survives a resume."""

from __future__ import annotations

import csv
import hashlib
import netrc
import os
from collections.abc import Sequence
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from sparseforge.errors import ConfigError

MODES = ("auto", "online", "offline", "disabled")


def has_wandb_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def resolve_mode(mode: str) -> str:
    """``auto`` -> $WANDB_MODE if set, else online with an API key, else offline."""
    if mode not in MODES:
        raise ConfigError("logger.wandb.mode", f"unknown mode {mode!r}", ", ".join(MODES))
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled", "dryrun", "run"):
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    return "online" if has_wandb_api_key() else "offline"


def run_id_for(run_dir: str | os.PathLike) -> str:
    """A W&B run id derived from the run directory, so a restarted run continues the same run."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger with sparseforge's defaults: auto offline and a stable run id."""

    def __init__(
        self,
        project: str = "sparseforge",
        entity: str | None = None,
        group: str | None = None,
        job_type: str = "train",
        tags: Sequence[str] = (),
        mode: str = "auto",
        save_dir: str = ".",
        name: str | None = None,
        log_model: bool | str = False,
        run_id: str | None = None,
        quiet: bool = True,
        **kwargs,
    ):
        self.resolved_mode = resolve_mode(mode)
        if quiet and "settings" not in kwargs and self.resolved_mode != "disabled":
            import wandb

            # Keeps the start lines (where the run is saved) but drops the end-of-run history dump.
            kwargs["settings"] = wandb.Settings(quiet=True)
        super().__init__(
            name=name or Path(save_dir).name,
            save_dir=save_dir,
            id=run_id or run_id_for(save_dir),
            project=project,
            entity=entity,
            group=group,
            job_type=job_type,
            tags=list(tags),
            log_model=log_model,
            offline=self.resolved_mode == "offline",
            mode=self.resolved_mode,
            resume="allow",
            **kwargs,
        )


class _ResumableWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv at start; this one keeps the rows
    logged before ``keep_before_step`` (the resumed checkpoint's step) and rewrites the file at
    the first save, so a resumed run appends to its history and a fresh one replaces it."""

    keep_before_step = 0

    def _check_log_dir_exists(self) -> None:
        self._previous_rows: list[dict[str, str]] | None = None
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self._previous_rows = list(csv.DictReader(file))

    def save(self) -> None:
        if self._previous_rows is not None and self.metrics:
            kept = [r for r in self._previous_rows if r.get("step") and int(float(r["step"])) < self.keep_before_step]
            self._fs.rm_file(self.metrics_file_path)
            self.metrics = kept + self.metrics
            self._previous_rows = None
        super().save()


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSVLogger whose metrics.csv survives a resume (``ckpt_path=auto``)."""

    _keep_before_step = 0

    def keep_rows_before(self, step: int) -> None:
        """Resuming at global step ``step``: keep the rows logged before it."""
        self._keep_before_step = int(step)
        if self._experiment is not None:
            self._experiment.keep_before_step = self._keep_before_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(log_dir=self.log_dir)
            self._experiment.keep_before_step = self._keep_before_step
        return self._experiment


def continue_logs_from(loggers, ckpt_path: str | None) -> None:
    """Tell the CSV loggers where a resumed run picks up (the checkpoint's global step)."""
    csv_loggers = [lg for lg in loggers if isinstance(lg, CSVLogger)]
    if not ckpt_path or not csv_loggers:
        return
    import torch

    step = torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=False).get("global_step", 0)
    for lg in csv_loggers:
        lg.keep_rows_before(step)


def finish_wandb(exit_code: int = 0) -> None:
    """Close the active W&B run, if any (on failure too, and between multirun jobs)."""
    import sys

    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)
