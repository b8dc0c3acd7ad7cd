"""Per-class accuracy and the confusion matrix after each task, against a hand computation on a
tiny run; peak memory in summary.json."""

from __future__ import annotations

import pytest
import torch

from sparseforge.train import build, train
from tests.helpers.cl import QUIET, one_thread, summary
from tests.helpers.config import compose_config

TINY = [*QUIET, "method=er", "method.buffer_size=50", "scenario.n_tasks=2", "scenario.epochs_per_task=1"]


def _hand_confusion(dm, method, tasks) -> list[list[int]]:
    """Predict every test example of ``tasks`` one at a time and count (true, predicted) by hand."""
    counts = [[0] * 10 for _ in range(10)]
    method.eval()
    with torch.no_grad():
        for task in tasks:
            for i in task.test_index.tolist():
                x = dm.preprocess_eval(dm.test_data.x[i : i + 1], task.id)
                predicted = int(method.predict_scores(x).argmax())
                counts[int(dm.test_data.y[i])][predicted] += 1
    return counts


def test_per_class_accuracy_and_confusion_equal_a_hand_computation(tmp_path):
    overrides = [*TINY, "task_loop.keep_task_checkpoints=true"]
    with one_thread():
        train(compose_config(overrides, output_dir=tmp_path / "run"))
    cl = summary(tmp_path / "run")["cl"]
    r = build(compose_config(overrides, output_dir=tmp_path / "check"))
    dm, method = r.datamodule, r.method
    for t in range(2):  # after each task, with that task's checkpoint
        ckpt = torch.load(tmp_path / "run" / "checkpoints" / f"task_{t}.ckpt", weights_only=False)
        method.load_state_dict(ckpt["state_dict"])
        counts = _hand_confusion(dm, method, dm.tasks[: t + 1])
        assert cl["confusion_matrix"][t] == counts
        for c in range(10):
            n = sum(counts[c])
            assert cl["per_class_acc"][t][c] == (pytest.approx(counts[c][c] / n) if n else None)
    seen_after_first = set(dm.tasks[0].classes)
    assert all((cl["per_class_acc"][0][c] is None) == (c not in seen_after_first) for c in range(10))
    # the class-IL accuracy of a task is its classes' share of the diagonal
    task1 = dm.tasks[1].classes
    correct = sum(cl["confusion_matrix"][1][c][c] for c in task1)
    assert cl["acc_matrix"][1][1] == pytest.approx(correct / sum(sum(cl["confusion_matrix"][1][c]) for c in task1))
    for png in ("confusion_matrix.png", "per_class_acc.png", "acc_matrix.png"):
        assert (tmp_path / "run" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _status_bytes(field: str) -> int:
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field + ":"))


def test_peak_memory_is_in_the_summary_and_is_the_runs_own(tmp_path):
    # An earlier peak in the same process (a run before this one in a sweep) must not count: touch
    # 600 MB, free it, then run; the run's peak is far below that of the process.
    spike = torch.ones(150_000_000)  # 600 MB, every page written
    del spike
    process_peak = _status_bytes("VmHWM")
    with one_thread():
        train(compose_config([*TINY, "callbacks=none"], output_dir=tmp_path / "run"))
    memory = summary(tmp_path / "run")["memory"]
    assert memory["peak_host_source"] == "VmHWM since the run started"
    assert 50e6 < memory["peak_host_bytes"] and memory["peak_host_bytes"] >= 0.9 * _status_bytes("VmRSS")
    assert memory["peak_host_bytes"] < process_peak - 300e6
    if not torch.cuda.is_available():
        assert memory["peak_gpu_allocated_bytes"] is None and memory["peak_gpu_reserved_bytes"] is None
