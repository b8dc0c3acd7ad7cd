"""Start-time checks that types alone cannot express. Each failure is one ConfigError line."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sparseforge.config.report import Report
from sparseforge.errors import ConfigError
from sparseforge.utils.allocator import CPU_ALLOCATOR

NONFINITE_LOSS = ("error", "allow")


def check_run_name(name) -> None:
    """A run name names a folder under outputs/ (sub-folders allowed); ``..`` would leave it."""
    if name is not None and ".." in PurePath(str(name)).parts:
        raise ConfigError("run_name", f"{name!r} leaves the outputs folder", "a name without '..' parts")


def _check_trainer(trainer: DictConfig) -> None:
    epochs = trainer.get("max_epochs")
    if epochs is None or epochs >= 1:
        return
    if epochs == -1 and (trainer.get("max_steps") or -1) > 0:
        return  # Lightning's "no epoch limit", bounded by max_steps
    raise ConfigError(
        "trainer.max_epochs",
        f"must be null (every task's epochs) or >= 1, got {epochs}",
        "null, >= 1, or -1 with trainer.max_steps > 0",
    )


def missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is ``???`` (a value the user must give), read without resolving
    interpolations; Hydra's own node is left out."""
    if isinstance(node, dict):
        items = ((f"{prefix}{k}", v) for k, v in node.items() if not (prefix == "" and k == "hydra"))
    elif isinstance(node, list):
        items = ((f"{prefix}{i}", v) for i, v in enumerate(node))
    else:
        return []
    found = []
    for key, value in items:
        found += [key] if value == "???" else missing_keys(value, f"{key}.")
    return found


def validate(cfg: DictConfig) -> None:
    missing = missing_keys(OmegaConf.to_container(cfg, resolve=False))
    if missing:
        raise ConfigError(missing[0], "has no value (??? in its config): set it, e.g. on the command line")
    if not isinstance(cfg.get("seed"), int):
        raise ConfigError("seed", f"must be an integer, got {cfg.get('seed')!r}")
    ckpt = cfg.get("ckpt_path")
    if ckpt is not None and not isinstance(ckpt, str):
        raise ConfigError("ckpt_path", f"must be null, 'auto' or a file path, got {ckpt!r}")
    data = cfg.data
    for key in ("batch_size", "eval_batch_size"):
        if data[key] < 1:
            raise ConfigError(f"data.{key}", f"must be >= 1, got {data[key]}")
    if cfg.optimizer.get("lr", 1.0) <= 0:
        raise ConfigError("optimizer.lr", f"must be > 0, got {cfg.optimizer.lr}")
    if cfg.get("report") is not None:  # read by sparseforge-aggregate; a typo fails here, not there
        Report.from_config(cfg.report)
    threads = cfg.get("torch_threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ConfigError("torch_threads", f"must be null or a positive integer, got {threads!r}")
    if cfg.get("cpu_allocator", "system") not in CPU_ALLOCATOR:
        raise ConfigError("cpu_allocator", f"unknown value {cfg.cpu_allocator!r}", ", ".join(CPU_ALLOCATOR))
    check_run_name(cfg.get("run_name"))
    if cfg.data.get("num_workers", 0) < 0:
        raise ConfigError(
            "data.num_workers", f"must be >= 0, got {cfg.data.num_workers}", "0 (load in the main process) or more"
        )
    if cfg.get("trainer") is not None:
        _check_trainer(cfg.trainer)
    if cfg.get("nonfinite_loss", "error") not in NONFINITE_LOSS:
        raise ConfigError("nonfinite_loss", f"unknown value {cfg.nonfinite_loss!r}", ", ".join(NONFINITE_LOSS))
