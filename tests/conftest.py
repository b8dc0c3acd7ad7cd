"""Shared fixtures: the real composed config, tiny on-disk datasets, full MNIST when present."""

from __future__ import annotations

import os
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
