"""Continual-learning metrics over the accuracy matrix R.

``R[t][j]`` is the accuracy on task ``j`` after training task ``t``; entries not evaluated are
``None``. With ``T`` the last evaluated row:

- average accuracy: mean of row ``T`` over the tasks seen so far;
- forgetting (Chaudhry et al. 2018): for each task ``j < T``, the best accuracy it had *before*
  the final task, ``max_{j <= t < T} R[t][j]``, minus its final accuracy ``R[T][j]``, averaged; the
  last task is excluded (cf. RaptorMai/online-continual-learning#23). It is negative when a task
  ends above its past best. Mammoth's ``utils/metrics.py`` also takes the final row into the max,
  which clips that case to 0;
- BWT: mean over tasks ``j < T`` of ``R[T][j] - R[j][j]``;
- FWT: mean over tasks ``j >= 1`` of ``R[j-1][j] - b[j]``, with ``b`` the accuracy of the model at
  initialisation; needs the optional evaluation of the next task (``forward_transfer``).

Beside R, per class: the confusion matrix of the class-IL predictions on the test examples
evaluated after a task (``confusion_after_task``) and the accuracy on each class
(``per_class_accuracy``).
"""

from __future__ import annotations

from collections.abc import Sequence

Matrix = Sequence[Sequence[float | None]]


def _final_row(R: Matrix) -> tuple[int, Sequence[float | None]]:
    rows = [i for i, row in enumerate(R) if any(v is not None for v in row)]
    if not rows:
        raise ValueError("the accuracy matrix has no evaluated row")
    last = rows[-1]
    return last, R[last]


def average_accuracy(R: Matrix) -> float:
    last, row = _final_row(R)
    seen = [row[j] for j in range(last + 1) if row[j] is not None]
    return sum(seen) / len(seen)


def forgetting(R: Matrix, include_final_row: bool = False) -> float | None:
    """Average forgetting; ``include_final_row=True`` gives Mammoth's variant (never below 0)."""
    last, row = _final_row(R)
    values = []
    for j in range(last):
        past = [R[t][j] for t in range(j, last + include_final_row) if R[t][j] is not None]
        if past and row[j] is not None:
            values.append(max(past) - row[j])
    return sum(values) / len(values) if values else None


def backward_transfer(R: Matrix) -> float | None:
    last, row = _final_row(R)
    values = [row[j] - R[j][j] for j in range(last) if row[j] is not None and R[j][j] is not None]
    return sum(values) / len(values) if values else None


def forward_transfer(R: Matrix, baseline: Sequence[float | None]) -> float | None:
    last, _ = _final_row(R)
    values = [
        R[j - 1][j] - baseline[j] for j in range(1, last + 1) if R[j - 1][j] is not None and baseline[j] is not None
    ]
    return sum(values) / len(values) if values else None


# -- per class ------------------------------------------------------------------------------------
Confusion = Sequence[Sequence[int]]  # C x C counts: row = true class, column = predicted class


def confusion_after_task(per_task: Sequence[Confusion], nested_test_sets: bool = False) -> list[list[int]]:
    """The confusion matrix after a task from the confusion matrices of the tasks evaluated then
    (``per_task[j]``: task ``j``'s test set, ``j`` up to the task just trained): their sum, each
    task's test set counted once (in a domain-incremental stream, each task's view of the test
    split). When each test set contains the earlier ones (blurry), the last one alone."""
    if not per_task:
        raise ValueError("no task was evaluated")
    if nested_test_sets:
        return [list(row) for row in per_task[-1]]
    return [[sum(m[i][j] for m in per_task) for j in range(len(per_task[0][i]))] for i in range(len(per_task[0]))]


def per_class_accuracy(confusion: Confusion) -> list[float | None]:
    """Accuracy on each true class (diagonal over row sum); None for a class with no test example."""
    return [row[c] / sum(row) if sum(row) else None for c, row in enumerate(confusion)]
