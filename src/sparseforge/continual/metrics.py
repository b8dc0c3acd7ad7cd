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
