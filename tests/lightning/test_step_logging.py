"""Per-step logging at batch 10: what a run logs per epoch, per task and per step.

The reference file ``data/batch10_logged_metrics.json`` was written by the code that logged
``train/loss`` with ``self.log`` on every step (commit 45f052f), by running this module as a
script: ``PYTHONPATH=src python -m tests.lightning.test_step_logging --write-reference``. It holds,
for three methods trained on the digits at batch 10 with ``trainer.log_every_n_steps=1``, every
metric row of metrics.csv and the accuracy matrices of summary.json.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from sparseforge.train import train
from tests.helpers.cl import one_thread
from tests.helpers.config import compose_config

REFERENCE = Path(__file__).parent / "data" / "batch10_logged_metrics.json"
STEP_LOSS = "train/loss"

METHODS = {
    "finetune": ["method=finetune"],
    "er": ["method=er", "method.buffer_size=100"],
    "derpp": ["method=derpp", "method.buffer_size=100", "method.alpha=1.0", "method.beta=0.5"],
}
COMMON = [
    "sparsity=dense",
    "logger=csv",
    "print_config=false",
    "trainer.enable_progress_bar=false",
    "data.batch_size=10",
    "scenario.epochs_per_task=2",
    "optimizer.lr=0.05",
    "seed=3",
]


def logged_metrics(run_dir: Path) -> dict[str, list[list[float]]]:
    """metrics.csv as {metric: [[step, value], ...]} in file order."""
    out: dict[str, list[list[float]]] = {}
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            for key, value in row.items():
                if key not in ("step", "epoch") and value != "":
                    out.setdefault(key, []).append([step, float(value)])
    return out


def run_method(method: str, run_dir: Path, extra: list[str] = ()) -> dict:
    with one_thread():
        train(compose_config([*COMMON, *METHODS[method], *extra], output_dir=run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "logged": logged_metrics(run_dir),
        "acc_matrix": summary["cl"]["acc_matrix"],
        "acc_matrix_task_il": summary["cl"]["acc_matrix_task_il"],
    }


def write_reference(out_dir: Path) -> None:
    reference = {m: run_method(m, out_dir / m, ["trainer.log_every_n_steps=1"]) for m in METHODS}
    REFERENCE.write_text(json.dumps(reference, indent=1) + "\n")


if __name__ == "__main__" and "--write-reference" in sys.argv:
    import tempfile

    write_reference(Path(tempfile.mkdtemp(prefix="step-logging-reference-")))


def reference() -> dict:
    return json.loads(REFERENCE.read_text())


def per_epoch(logged: dict) -> dict:
    """Every logged metric but the per-step training loss (per epoch, per task, per update)."""
    return {k: v for k, v in logged.items() if k != STEP_LOSS}


@pytest.mark.parametrize("method", list(METHODS))
def test_per_step_logging_writes_every_row_it_wrote_before(method, tmp_path):
    """With ``trainer.log_every_n_steps=1`` (a per-step curve) every row of metrics.csv, the
    per-step loss included, and both accuracy matrices are those of the reference."""
    expected = reference()[method]
    got = run_method(method, tmp_path / "run", ["trainer.log_every_n_steps=1"])
    assert got["acc_matrix"] == expected["acc_matrix"]
    assert got["acc_matrix_task_il"] == expected["acc_matrix_task_il"]
    assert got["logged"] == expected["logged"]


@pytest.mark.parametrize("method", ["finetune", "derpp"])
def test_default_logging_writes_the_same_epoch_metrics_and_the_mean_loss_of_each_window(method, tmp_path):
    """At the default ``log_every_n_steps`` (10) the per-epoch and per-task rows are the
    reference's, and the loss row at step s is the mean of the reference's per-step losses over
    the 10 steps ending at s (the steps since the row before)."""
    expected = reference()[method]
    got = run_method(method, tmp_path / "run")
    assert got["acc_matrix"] == expected["acc_matrix"]
    assert per_epoch(got["logged"]) == per_epoch(expected["logged"])
    per_step = dict(expected["logged"][STEP_LOSS])  # step -> that step's loss
    rows = got["logged"][STEP_LOSS]
    assert [s for s, _ in rows] == [s for s in per_step if (s + 1) % 10 == 0]
    for step, value in rows:
        window = [per_step[s] for s in range(step - 9, step + 1)]
        assert value == pytest.approx(sum(window) / 10, rel=1e-6)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    last = max(per_step)  # the run's last steps, since the last row, as its summary's train/loss
    tail = [per_step[s] for s in range(rows[-1][0] + 1, last + 1)] or [per_step[last]]
    assert summary["metrics"]["train/loss"] == pytest.approx(sum(tail) / len(tail), rel=1e-6)


def test_with_gradient_accumulation_a_row_is_written_once_per_optimizer_step(tmp_path):
    """Lightning writes after the batch that steps; the row holds the mean over every batch since
    the row before (here the two batches of each step)."""
    got = run_method("finetune", tmp_path / "run", ["trainer.accumulate_grad_batches=2", "trainer.log_every_n_steps=1"])
    steps = [s for s, _ in got["logged"][STEP_LOSS]]
    assert steps == list(range(len(steps))) and len(steps) > 100


def test_a_checkpoint_written_by_torchmetrics_accuracy_resumes_the_epochs_count():
    """Checkpoints from inside an epoch hold the training accuracy's counts; older ones hold
    torchmetrics' (micro MulticlassAccuracy: tp, fp, tn, fn), which still load."""
    import torch

    from sparseforge.methods import Finetune

    method = Finetune(torch.nn.Linear(2, 3), optimizer=None)
    old = {"num_classes": 3, "update_count": 2, "tp": torch.tensor(7), "fp": torch.tensor(3)}
    method.on_load_checkpoint({"train_accuracy": {**old, "tn": torch.tensor(17), "fn": torch.tensor(3)}})
    assert (int(method._train_correct), method._train_seen) == (7, 10)
    saved: dict = {}
    method.on_save_checkpoint(saved)
    assert saved["train_accuracy"] == {"correct": 7, "seen": 10}


def test_a_run_resumed_inside_a_window_logs_the_rows_of_the_uninterrupted_run(tmp_path):
    """The sums of a window that a checkpoint cuts are in the checkpoint: the row after the resume
    averages the same steps as in the uninterrupted run (digits at batch 10: 27 steps a task)."""
    from tests.helpers.cl import Crash

    common = ["callbacks.model_checkpoint.every_n_train_steps=4", "trainer.log_every_n_steps=10"]
    crash = ["+callbacks.crash._target_=tests.helpers.cl.crash_at_step", "+callbacks.crash.step=36"]
    full = run_method("derpp", tmp_path / "full", common)
    with pytest.raises(Crash):
        run_method("derpp", tmp_path / "part", [*common, *crash])
    part = run_method("derpp", tmp_path / "part", [*common, "ckpt_path=auto"])
    assert part["logged"] == full["logged"]
    assert part["acc_matrix"] == full["acc_matrix"]
