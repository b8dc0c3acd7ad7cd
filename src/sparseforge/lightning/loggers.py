"""Loggers: W&B that never prompts, never hangs and resumes the same run after a restart.

The CSV log that survives a resume and a kill is in ``csv_log.py``.
"""

from __future__ import annotations

import hashlib
import netrc
import os
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

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


def finish_wandb(exit_code: int = 0) -> None:
    """Close the active W&B run, if any (on failure too, and between multirun jobs)."""
    import sys

    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)
