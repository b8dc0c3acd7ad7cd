"""What identifies a sweep point, where it lives, and whether it already finished.

A point is identified by its experiment, its seed and its command-line overrides, minus the
overrides that do not change what the run computes (where it logs, whether it resumes, ...).
The identity hashes into the point's directory name, and through the directory into the W&B
run id (``lightning/loggers.py: run_id_for``). So the same command always lands in the same
directory: a requeued or restarted job finds its ``last.ckpt`` and continues the same W&B run,
and a rerun sweep (``ckpt_path=auto``) skips the points whose summary.json says completed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Overrides (by key, or key prefix before a ".") that are left out of a point's identity:
# naming, resuming, logging, printing, paths, the sweeper itself and the aggregated table
# (report). Everything else, including hardware (devices change the effective batch size),
# debug and a study with its arm, is part of the point.
NOT_PART_OF_POINT = (
    "sweep_name",
    "run_name",
    "ckpt_path",
    "print_config",
    "logger",
    "tags",
    "paths",
    "hydra",
    "hparams_search",
    "optimized_metric",
    "report",
    "trainer.enable_progress_bar",
)
SEED_KEY = "seed"
_MAX_READABLE = 120


def override_key(override: str) -> str:
    """``+a.b=1`` -> ``a.b``; ``~a`` -> ``a``; ``hydra/launcher=x`` -> ``hydra/launcher``."""
    key = override.split("=", 1)[0]
    return key.lstrip("+~")


def _excluded(key: str, excluded: Iterable[str]) -> bool:
    key = key.replace("/", ".")
    return any(key == k or key.startswith(k + ".") for k in excluded)


def point_overrides(overrides: Iterable[str], excluded: Iterable[str] = NOT_PART_OF_POINT) -> list[str]:
    """The overrides that define a point, sorted by key (command-line order does not matter)."""
    kept = [str(o) for o in overrides if not _excluded(override_key(str(o)), excluded)]
    return sorted(kept, key=lambda o: (override_key(o), o))


def point_hash(overrides: Iterable[str], experiment: Any = None, seed: Any = None) -> str:
    identity = {"experiment": experiment, "seed": seed, "overrides": point_overrides(overrides)}
    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]


def point_dirname(overrides: Iterable[str], experiment: Any = None, seed: Any = None) -> str:
    """A readable, deterministic directory name: ``density=0.1,seed=0-3f2a9c1b0d``.

    The readable part is the point's overrides with keys shortened to their last component
    (truncated, path separators replaced); the hash after it is what makes the name unique.
    """
    overrides = list(overrides)
    readable = ",".join(_short_override(o) for o in point_overrides(overrides))
    readable = re.sub(r"[/\\\s]+", "_", readable)[:_MAX_READABLE] or "default"
    return f"{readable}-{point_hash(overrides, experiment, seed)}"


def _short_override(override: str) -> str:
    key, _, value = override.lstrip("+~").partition("=")
    return f"{key.rsplit('.', 1)[-1]}={value}"


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's summary.json, or None when it is missing or unreadable (a run still starting)."""
    path = Path(run_dir) / "summary.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def completed_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """The summary of a run that finished (status "completed"), else None."""
    summary = read_summary(run_dir)
    return summary if summary and summary.get("status") == "completed" else None
