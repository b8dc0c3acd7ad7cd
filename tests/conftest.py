"""Shared fixtures: the real composed config, tiny on-disk datasets, full MNIST when present."""

from __future__ import annotations

import os
import subprocess
import sys
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

REPO = Path(__file__).resolve().parents[1]


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
        pytest.skip("full MNIST not available: set SPARSEFORGE_DATA_DIR to a folder with MNIST/raw (CI does)")
    return Path(root)


def run_cli(args, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python train.py <args>`` in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
