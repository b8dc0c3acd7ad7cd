"""Sparse training really learns: LeNet-300-100 on full MNIST through the real config.

Measured with the study sparsity_mnist (3 epochs, seeds 0/1/2, dense_mnist recipe),
with RigL's grow candidates (all weights inactive after the drop, the default): dense
98.06/98.10/98.21, RigL ERK 0.1 96.98/97.28/97.40 (dense ahead by 1.08/0.82/0.81 points); at
density 0.02, RigL ERK 94.25/94.33/94.78 vs uniform 91.89/93.61/90.36 (ERK ahead by
2.36/0.72/4.42 points). The gap threshold is 1.5 points; the ERK lead on seed 0 must be at least
0.6 points (below every measured lead; with the older candidates the leads were 1.28/1.25/3.14).
"""

from __future__ import annotations

import json

import pytest
import torch

from sparseforge.train import train
from tests.helpers.config import compose_config

pytestmark = pytest.mark.slow


@pytest.fixture
def one_thread():
    # Several processes share two cores in CI; one torch thread each is far faster than two.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mnist_accuracy(tmp_path, full_mnist_dir, arm: str) -> dict:
    """One run of the study sparsity_mnist (dense_mnist, 3 epochs): the arm at seed 0."""
    run_dir = tmp_path / arm
    cfg = compose_config(
        [
            "study=sparsity_mnist",
            f"arm=sparsity_mnist/{arm}",
            f"paths.data_dir={full_mnist_dir}",
            "dataset.download=false",
            "seed=0",
            "logger=none",
            "hardware=cpu",
            "trainer.enable_progress_bar=false",
        ],
        output_dir=run_dir,
    )
    train(cfg)
    return json.loads((run_dir / "summary.json").read_text())


def test_rigl_at_density_0_1_ends_within_1_5_points_of_dense(tmp_path, full_mnist_dir, one_thread):
    dense = mnist_accuracy(tmp_path, full_mnist_dir, "dense")
    rigl = mnist_accuracy(tmp_path, full_mnist_dir, "rigl_erk_10pct")
    assert rigl["sparsity"]["density"] == pytest.approx(0.1, abs=1e-5) and rigl["sparsity"]["updates"] > 0
    assert rigl["flops"]["train_relative_to_dense"] < 0.25
    gap = dense["metrics"]["test/acc"] - rigl["metrics"]["test/acc"]
    print(f"dense {dense['metrics']['test/acc']:.4f} rigl {rigl['metrics']['test/acc']:.4f} gap {gap:.4f}")
    assert dense["metrics"]["test/acc"] > 0.97
    assert gap <= 0.015


def test_erk_beats_uniform_at_a_low_density(tmp_path, full_mnist_dir, one_thread):
    erk = mnist_accuracy(tmp_path, full_mnist_dir, "rigl_erk_2pct")
    uniform = mnist_accuracy(tmp_path, full_mnist_dir, "rigl_uniform_2pct")
    assert erk["sparsity"]["density"] == uniform["sparsity"]["density"]  # the same budget, exactly
    lead = erk["metrics"]["test/acc"] - uniform["metrics"]["test/acc"]
    print(f"erk {erk['metrics']['test/acc']:.4f} uniform {uniform['metrics']['test/acc']:.4f} lead {lead:.4f}")
    assert lead >= 0.006
