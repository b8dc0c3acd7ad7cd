"""Per-step logging at batch 10: what a run logs per epoch, per task and per step.

The reference file ``data/batch10_logged_metrics.json`` was written by the code that logged
``train/loss`` with ``self.log`` on every step (commit 85633f3), by running this module as a
script: ``PYTHONPATH=src python -m tests.lightning.test_step_logging --write-reference``. It holds,
for three methods trained on the digits at batch 10 with ``trainer.log_every_n_steps=1``, every
metric row of metrics.csv and the accuracy matrices of summary.json.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

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
