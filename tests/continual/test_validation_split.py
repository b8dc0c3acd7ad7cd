"""The validation split (data.val_fraction): stratified, disjoint, complete, and a function of the
seed only; held out of every task so that no task trains on another task's validation image."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.continual.scenarios import Blurry, ClassIncremental
from sparseforge.continual.validation import hold_out_validation, stratified_split, validation_view
from sparseforge.errors import ConfigError

# class sizes (12..60 examples each, so every class holds one out; 1..6 classes), shuffled together
class_sizes = st.lists(st.integers(12, 60), min_size=1, max_size=6)
fractions = st.floats(0.05, 0.45)


def labels_of(sizes: list[int], seed: int = 0) -> torch.Tensor:
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


@settings(max_examples=60, deadline=None)
@given(sizes=class_sizes, fraction=fractions, seed=st.integers(0, 2**31 - 1))
def test_the_split_is_stratified_disjoint_complete_and_seeded(sizes, fraction, seed):
    y = labels_of(sizes)
    index = torch.arange(len(y))
    train, val = stratified_split(index, y, fraction, seed)
    assert not torch.isin(train, val).any()  # disjoint
    assert torch.equal(torch.cat([train, val]).sort().values, index)  # union = original
    for c, n in enumerate(sizes):  # per class within 1 of fraction * n_c
        assert abs(int((y[val] == c).sum()) - fraction * n) <= 1
    again = stratified_split(index, y, fraction, seed)  # deterministic per seed
    assert torch.equal(again[0], train) and torch.equal(again[1], val)
    # the order the examples are listed in does not matter (every rank, every task order)
    shuffled = index[torch.randperm(len(index), generator=torch.Generator().manual_seed(seed + 1))]
    assert torch.equal(stratified_split(shuffled, y, fraction, seed)[1], val)


@settings(max_examples=30, deadline=None)
@given(
    n_classes=st.integers(2, 5),
    fraction=fractions,
    seeds=st.lists(st.integers(0, 10**6), min_size=2, max_size=2, unique=True),
)
def test_different_seeds_hold_out_different_examples(n_classes, fraction, seeds):
    # 80 examples a class: two seeds drawing the same subsets has probability < 1e-6
    y = labels_of([80] * n_classes)
    index = torch.arange(len(y))
    a = stratified_split(index, y, fraction, seeds[0])[1]
    b = stratified_split(index, y, fraction, seeds[1])[1]
    assert len(a) == len(b) and not torch.equal(a, b)


@settings(max_examples=25, deadline=None)
@given(fraction=fractions, seed=st.integers(0, 1000), n_tasks=st.sampled_from([1, 2, 5]))
def test_class_il_tasks_keep_their_classes_and_lose_only_validation_examples(fraction, seed, n_tasks):
    y = labels_of([30, 31, 29, 40, 33, 30, 28, 35, 30, 37], seed)
    tasks = ClassIncremental(n_tasks=n_tasks).build(y, y, 10, seed)
    split = hold_out_validation(tasks, y, fraction, seed)
    _, val = stratified_split(torch.arange(len(y)), y, fraction, seed)
    assert torch.equal(torch.cat([t.val_index for t in split]).sort().values, val)
    for before, after in zip(tasks, split, strict=True):
        assert torch.equal(torch.cat([after.train_index, after.val_index]).sort().values, before.train_index)
        assert not torch.isin(after.train_index, after.val_index).any()
        assert torch.equal(after.test_index, before.test_index) and after.classes == before.classes
        for c in before.classes:
            n_c = int((y[before.train_index] == c).sum())
            assert abs(int((y[after.val_index] == c).sum()) - fraction * n_c) <= 1


def test_no_blurry_task_trains_on_an_example_any_task_validates_on():
    y = labels_of([50] * 10)
    tasks = Blurry(class_per_episode=3, p_novelty=0.5, p_sample=1.0).build(y, y, 10, seed=3)
    assert len(tasks) > 1  # recurring classes: the same images in several tasks
    split = hold_out_validation(tasks, y, 0.2, seed=3)
    all_val = torch.cat([t.val_index for t in split])
    for task in split:
        assert not torch.isin(task.train_index, all_val).any()


def test_zero_fraction_changes_nothing_and_the_view_evaluates_validation_examples():
    y = labels_of([10, 10])
    tasks = ClassIncremental(n_tasks=2).build(y, y, 2, 0)
    assert hold_out_validation(tasks, y, 0.0, 0) == tasks
    view = validation_view(hold_out_validation(tasks, y, 0.3, 0)[1])
    assert len(view.test_index) == 3 and (y[view.test_index] == 1).all()


@pytest.mark.parametrize(
    "sizes, fraction, says",
    [
        ([10, 10], 1.0, "must be in [0, 1)"),
        ([10, 10], -0.1, "must be in [0, 1)"),
        ([10, 1], 0.6, "leaves class 1 (1 training images) with none to train on"),
        ([3, 3], 0.1, "holds out none"),
    ],
)
def test_a_fraction_that_leaves_nothing_is_one_line(sizes, fraction, says):
    y = labels_of(sizes)
    with pytest.raises(ConfigError, match="data.val_fraction") as err:
        stratified_split(torch.arange(len(y)), y, fraction, 0)
    assert says in str(err.value) and "\n" not in str(err.value)
