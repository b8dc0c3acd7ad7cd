"""Shared fixtures: the real composed config, tiny on-disk datasets, full MNIST when present.

Tests that need a SLURM cluster (marker ``slurm``) or full MNIST (fixture ``full_mnist_dir``) are
skipped, with the reason, where those are missing: ``make test`` passes on a fresh machine. CI
sets ``SPARSEFORGE_REQUIRE_SLURM=1`` and ``SPARSEFORGE_REQUIRE_MNIST=1`` (``.ci/run``), which turn a
missing cluster or dataset into a failure, so that there they are never silently left out.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

# Nothing in the tests may prompt for, or wait on, W&B. Tests that check W&B's offline files
# set logger.wandb.mode=offline explicitly.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
# One intra-op thread per process: the tests run small models, often several processes at once
# (CLI subprocesses, DDP ranks, wandb-core), and OpenMP threads waiting on each other made steps
# 10-30x slower on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")

E2E_DIR = Path(__file__).resolve().parent / "e2e"


def pytest_collection_modifyitems(items) -> None:
    """``e2e``: whole runs in other processes. Everything under tests/e2e/, and every DDP or SLURM
    test wherever it lives (``pytest -m "not e2e"`` is the in-process suite)."""
    for item in items:
        in_e2e_dir = E2E_DIR in Path(str(item.fspath)).resolve().parents
        if in_e2e_dir or item.get_closest_marker("ddp") or item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.e2e)


def _required(variable: str) -> bool:
    return os.environ.get(variable, "") not in ("", "0")


def skip_or_fail(missing: str, variable: str, how: str) -> None:
    """Skip a test whose resource is ``missing``, unless ``variable`` requires it (CI): then fail."""
    if _required(variable):
        pytest.fail(f"{missing}, and {variable}=1 requires it; {how}")
    pytest.skip(f"{missing}; {how} (set {variable}=1 to fail instead of skipping)")


@functools.cache
def slurm_missing() -> str | None:
    """Why the local SLURM cluster cannot take jobs, or None when it can."""
    if shutil.which("sinfo") is None:
        return "SLURM is not installed here (no sinfo)"
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed ({exc})"
    states = [s.rstrip("*") for s in result.stdout.split()]
    if result.returncode != 0 or not any(s in ("idle", "mixed", "allocated", "completing") for s in states):
        return f"the SLURM cluster is not up (sinfo: {result.stdout.strip() or result.stderr.strip()})"
    return None


def pytest_runtest_setup(item) -> None:
    if item.get_closest_marker("slurm") and (missing := slurm_missing()):
        skip_or_fail(missing, "SPARSEFORGE_REQUIRE_SLURM", "start it with sudo slurm/start-local-slurm.sh")


@pytest.fixture
def data_dir(tmp_path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def full_mnist_dir() -> Path:
    """Folder holding MNIST/raw (full MNIST), from $SPARSEFORGE_DATA_DIR. CI points it at ../shared/data."""
    root = os.environ.get("SPARSEFORGE_DATA_DIR")
    if not root or not (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        skip_or_fail(
            f"full MNIST is not in SPARSEFORGE_DATA_DIR={root or '(unset)'}",
            "SPARSEFORGE_REQUIRE_MNIST",
            "point SPARSEFORGE_DATA_DIR at a folder with MNIST/raw",
        )
    return Path(root)
