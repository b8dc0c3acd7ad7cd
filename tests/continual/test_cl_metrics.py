"""CL metrics on hand-made accuracy matrices (values worked out by hand in the comments)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.continual import metrics

# R[t][j]: accuracy on task j after training task t. None = not evaluated.
R3 = [
    [0.9, None, None],
    [0.6, 0.8, None],
    [0.5, 0.7, 0.95],
]


def test_average_accuracy_is_the_mean_of_the_last_row():
    assert metrics.average_accuracy(R3) == pytest.approx((0.5 + 0.7 + 0.95) / 3)


def test_forgetting_excludes_the_last_task_and_uses_the_best_past_accuracy():
    # task 0: best before the end max(0.9, 0.6) = 0.9, final 0.5 -> 0.4
    # task 1: best before the end 0.8, final 0.7 -> 0.1 ; task 2 (last) excluded
    assert metrics.forgetting(R3) == pytest.approx((0.4 + 0.1) / 2)


def test_forgetting_takes_the_max_over_rows_not_the_diagonal():
    R = [[0.5, None, None], [0.9, 0.8, None], [0.3, 0.8, 0.7]]
    # task 0: max(0.5, 0.9) - 0.3 = 0.6 (the accuracy went *up* after task 1); task 1: 0.8 - 0.8 = 0
    assert metrics.forgetting(R) == pytest.approx(0.3)
    # BWT only compares with the diagonal: (0.3 - 0.5 + 0.8 - 0.8) / 2
    assert metrics.backward_transfer(R) == pytest.approx(-0.1)


def test_forgetting_is_negative_when_a_task_ends_above_its_past_best():
    # Chaudhry et al.'s definition (max over *previous* rows only) can go below zero ...
    R = [[0.5, None], [0.7, 0.9]]
    assert metrics.forgetting(R) == pytest.approx(-0.2)
    # ... Mammoth's takes the final row into the max too, which clips it to 0
    assert metrics.forgetting(R, include_final_row=True) == pytest.approx(0.0)
    assert metrics.forgetting(R3, include_final_row=True) == pytest.approx(metrics.forgetting(R3))


def test_backward_transfer():
    # (0.5 - 0.9 + 0.7 - 0.8) / 2
    assert metrics.backward_transfer(R3) == pytest.approx(-0.25)


def test_forward_transfer_uses_the_entry_above_the_diagonal_and_the_initial_model():
    R = [[0.9, 0.3, None], [0.6, 0.8, 0.2], [0.5, 0.7, 0.95]]
    initial = [0.1, 0.1, 0.25]
    # j=1: R[0][1] - b[1] = 0.2 ; j=2: R[1][2] - b[2] = -0.05
    assert metrics.forward_transfer(R, initial) == pytest.approx((0.2 - 0.05) / 2)


def test_a_partial_matrix_uses_its_last_evaluated_row():
    R = [[0.9, None, None], [0.6, 0.8, None], [None, None, None]]
    assert metrics.average_accuracy(R) == pytest.approx(0.7)
    assert metrics.forgetting(R) == pytest.approx(0.3)
    assert metrics.backward_transfer(R) == pytest.approx(-0.3)


def test_one_task_has_no_forgetting_or_transfer():
    R = [[0.8]]
    assert metrics.average_accuracy(R) == pytest.approx(0.8)
    assert metrics.forgetting(R) is None
    assert metrics.backward_transfer(R) is None


def test_an_empty_matrix_is_an_error():
    with pytest.raises(ValueError):
        metrics.average_accuracy([[None, None], [None, None]])


def lower_triangular(n: int):
    acc = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
    return st.lists(st.lists(acc, min_size=n, max_size=n), min_size=n, max_size=n).map(
        lambda rows: [[v if j <= t else None for j, v in enumerate(row)] for t, row in enumerate(rows)]
    )


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=2, max_value=8).flatmap(lower_triangular))
def test_invariants(R):
    n = len(R)
    avg = metrics.average_accuracy(R)
    assert min(R[-1]) - 1e-12 <= avg <= max(R[-1]) + 1e-12
    f, b = metrics.forgetting(R), metrics.backward_transfer(R)
    # forgetting compares with the best past value, BWT with the value just after training:
    # forgetting >= -BWT, with equality when no task ever improved after its own training.
    assert f >= -b - 1e-12
    monotone = all(R[t][j] <= R[j][j] for j in range(n) for t in range(j, n - 1))
    if monotone:
        assert f == pytest.approx(-b)
    # forgetting is a mean of per-task drops bounded by one; Mammoth's variant is max(0, drop)
    assert -1.0 - 1e-12 <= f <= 1.0 + 1e-12
    assert metrics.forgetting(R, include_final_row=True) >= max(f, 0.0) - 1e-12


# -- per class ---------------------------------------------------------------------------------------
# Two tasks over 3 classes; rows = true class, columns = predicted class.
TASK0 = [[3, 1, 0], [2, 2, 0], [0, 0, 0]]  # task 0 tests classes 0 and 1
TASK1 = [[0, 0, 0], [0, 0, 0], [1, 0, 4]]  # task 1 tests class 2


def test_the_confusion_after_a_task_sums_the_tasks_test_sets():
    assert metrics.confusion_after_task([TASK0]) == TASK0
    assert metrics.confusion_after_task([TASK0, TASK1]) == [[3, 1, 0], [2, 2, 0], [1, 0, 4]]
    # blurry: task 1's test set already holds task 0's, so it alone is the confusion after task 1
    nested = [[3, 1, 0], [2, 2, 0], [1, 0, 4]]
    assert metrics.confusion_after_task([TASK0, nested], nested_test_sets=True) == nested


def test_per_class_accuracy_is_the_diagonal_over_the_row():
    assert metrics.per_class_accuracy(TASK0) == [pytest.approx(3 / 4), pytest.approx(2 / 4), None]
    assert metrics.per_class_accuracy([[3, 1, 0], [2, 2, 0], [1, 0, 4]])[2] == pytest.approx(4 / 5)
