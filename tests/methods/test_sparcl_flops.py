"""SparCL's training FLOPs against a hand calculation on a tiny model.

MLP 784-16-10 on 28x28 inputs: forward FLOPs per example (2 x MACs) are 2*784*16 = 25088 in the
sparse first layer and 2*16*10 = 320 in the dense classifier, f_d = 25408. Two tasks of 200
examples (fake MNIST: 40 per class, 5 classes per task), batch 20, 4 epochs per task.
"""

from __future__ import annotations

import json

import pytest

from sparseforge.train import train
from tests.helpers.config import compose_config
from tests.helpers.fake_data import write_mnist_like

F_SPARSE, F_OTHER = 2 * 784 * 16, 2 * 16 * 10
F_DENSE = F_SPARSE + F_OTHER
N_LAYER = 784 * 16  # 12544 weights in the sparse layer
BASE = N_LAYER // 4  # density 0.25: 3136
GROWN = round(0.01 * N_LAYER)  # +1% at each task's start: 125
KEPT_GRAD = round(0.2 * N_LAYER)  # DGM, gradient_sparsity 0.8 of the layer: 2509


def overrides(data_dir, base: str, replay_first_task: bool) -> list[str]:
    return [
        "dataset=mnist",
        f"paths.data_dir={data_dir}",
        "dataset.download=false",
        "model=mlp",
        "model.hidden_sizes=[16]",
        "scenario=class_il",
        "scenario.n_tasks=2",
        "scenario.epochs_per_task=4",
        "method=sparcl",
        f"method.base={base}",
        f"method.replay_first_task={str(replay_first_task).lower()}",
        "method.buffer_size=50",
        "method.ddr.removal_epochs=[2]",
        "method.ddr.remove_fraction=0.3",
        "method.dgm.refresh_every=3",
        "sparsity=sparcl",
        "sparsity.include=[features.1]",
        "sparsity.tdm.every_epochs=2",
        "sparsity.tdm.phase_epochs=[2,4]",
        "data.batch_size=20",
        "optimizer.momentum=0",
        "optimizer.weight_decay=0",
        "logger=none",
        "callbacks=none",
        "hardware=cpu",
    ]


def hand_calculation(draws: int, replay_first_task: bool) -> tuple[float, float, int, int]:
    """(spent FLOPs, dense-reference FLOPs, examples trained, reference-only examples)."""
    spent = reference = 0.0
    trained = reference_only = 0
    buffer = 0  # examples stored so far (reservoir of 50: every example is offered)
    for task in range(2):
        for epoch in range(4):
            density = (BASE + GROWN if epoch < 2 else BASE) / N_LAYER  # TDM: +1% at 0, back at 2
            examples = 200 if epoch < 2 else 140  # DDR: 60 of 200 removed at epoch 2
            forward = F_OTHER + F_SPARSE * density
            for step in range(10):  # the dense reference always runs the full 10 steps
                ref_replay = draws * min(20, buffer) if buffer else 0
                reference += (20 + ref_replay) * 3 * F_DENSE
                if step * 20 < examples:
                    replay = ref_replay if (task > 0 or replay_first_task) else 0
                    refresh = step % 3 == 0  # DGM recomputes its mask: the full masked gradient
                    grad_density = density if refresh else KEPT_GRAD / N_LAYER
                    weight_grad = F_OTHER + F_SPARSE * grad_density
                    spent += (20 + replay) * (2 * forward + weight_grad)
                    trained += 20 + replay
                    reference_only += ref_replay - replay
                    buffer = min(50, buffer + 20)
                else:
                    reference_only += 20 + draws * min(20, buffer)
    return spent, reference, trained, reference_only


@pytest.mark.parametrize("base, draws, replay_first_task", [("derpp", 2, False), ("er", 1, True)])
def test_training_flops_match_a_hand_calculation(tmp_path, base, draws, replay_first_task):
    data_dir = tmp_path / "data"
    write_mnist_like(data_dir, n_train=400, n_test=100)
    run_dir = tmp_path / "run"
    train(compose_config(overrides(data_dir, base, replay_first_task), run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    flops = summary["flops"]
    spent, reference, trained, reference_only = hand_calculation(draws, replay_first_task)

    assert flops["dense_forward"] == F_DENSE
    assert flops["samples_trained"] == trained
    assert flops["samples_reference_only"] == reference_only
    assert flops["train_total"] == pytest.approx(spent, rel=1e-9)
    assert flops["train_dense_total"] == pytest.approx(reference, rel=1e-9)
    assert flops["train_relative_to_dense"] == pytest.approx(spent / reference, rel=1e-9)
    assert summary["metrics"]["flops/train_relative_to_dense"] == flops["train_relative_to_dense"]
    parts = summary["sparcl"]["reference_only_samples"]
    assert parts["removed_data"] == 4 * 60 * (1 + draws)  # 3 steps x (20 current + replay) per reduced epoch
    assert parts["removed_data"] + parts["replay"] == reference_only
