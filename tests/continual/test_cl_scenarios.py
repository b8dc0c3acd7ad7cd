"""Scenarios: class-IL / task-IL splits, SHARP's blurry stream, and their bad inputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.continual.scenarios import Blurry, ClassIncremental, TaskIncremental
from sparseforge.errors import ConfigError


def labels(num_classes: int, per_class: int, seed: int = 0) -> torch.Tensor:
    y = torch.arange(num_classes).repeat_interleave(per_class)
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


def test_class_il_split_in_natural_order():
    train_y, test_y = labels(10, 6), labels(10, 3, seed=1)
    tasks = ClassIncremental(n_tasks=5).build(train_y, test_y, 10, seed=0)
    assert [t.classes for t in tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    seen = torch.cat([t.train_index for t in tasks])
    assert sorted(seen.tolist()) == list(range(len(train_y)))  # every example in exactly one task
    for t in tasks:
        assert set(train_y[t.train_index].tolist()) == set(t.classes)
        assert torch.equal(
            torch.sort(t.test_index).values, torch.nonzero(torch.isin(test_y, torch.tensor(t.classes))).flatten()
        )


def test_random_class_order_is_a_seeded_permutation():
    train_y, test_y = labels(10, 2), labels(10, 1)
    a = ClassIncremental(n_tasks=5, class_order="random").build(train_y, test_y, 10, seed=3)
    b = ClassIncremental(n_tasks=5, class_order="random").build(train_y, test_y, 10, seed=3)
    c = ClassIncremental(n_tasks=5, class_order="random", order_seed=4).build(train_y, test_y, 10, seed=3)
    order = [k for t in a for k in t.classes]
    assert sorted(order) == list(range(10)) and order != list(range(10))
    assert [t.classes for t in a] == [t.classes for t in b] != [t.classes for t in c]


def test_explicit_order_and_uneven_split():
    train_y, test_y = labels(10, 2), labels(10, 1)
    tasks = TaskIncremental(n_tasks=3, class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0], task_sizes=[4, 3, 3]).build(
        train_y, test_y, 10, seed=0
    )
    assert [t.classes for t in tasks] == [(9, 8, 7, 6), (5, 4, 3), (2, 1, 0)]


@given(per_task=st.integers(2, 12), subset_seed=st.integers(0, 3), run_seed=st.integers(0, 3))
@settings(max_examples=25, deadline=None)
def test_train_per_task_is_a_class_balanced_subset_the_same_for_every_run_seed(per_task, subset_seed, run_seed):
    train_y, test_y = labels(10, 6), labels(10, 3, seed=1)
    full = ClassIncremental(n_tasks=5).build(train_y, test_y, 10, seed=run_seed)
    scenario = ClassIncremental(n_tasks=5, train_per_task=per_task, subset_seed=subset_seed)
    tasks = scenario.build(train_y, test_y, 10, seed=run_seed)
    assert [t.train_index.tolist() for t in tasks] == [
        t.train_index.tolist() for t in scenario.build(train_y, test_y, 10, seed=run_seed + 1)
    ]  # the subset does not follow the run seed
    for task, whole in zip(tasks, full, strict=True):
        kept = task.train_index.tolist()
        assert kept == sorted(kept) and set(kept) <= set(whole.train_index.tolist())
        counts = torch.bincount(train_y[task.train_index], minlength=10)
        assert all(counts[c] == per_task // 2 for c in task.classes)  # 2 classes per task
        assert torch.equal(task.test_index, whole.test_index)  # the test split stays whole


def test_train_per_task_draws_with_its_own_seed_and_checks_the_data():
    train_y, test_y = labels(10, 6), labels(10, 3, seed=1)
    a = ClassIncremental(n_tasks=5, train_per_task=4, subset_seed=0).build(train_y, test_y, 10, seed=0)
    b = ClassIncremental(n_tasks=5, train_per_task=4, subset_seed=1).build(train_y, test_y, 10, seed=0)
    assert [t.train_index.tolist() for t in a] != [t.train_index.tolist() for t in b]
    with pytest.raises(
        ConfigError, match="scenario.train_per_task: asks for 7 examples of class 0, the training split has 6"
    ):
        ClassIncremental(n_tasks=5, train_per_task=14).build(train_y, test_y, 10, seed=0)
    with pytest.raises(ConfigError, match="scenario.train_per_task: 1 is fewer than task 0's 2 classes"):
        ClassIncremental(n_tasks=5, train_per_task=1).build(train_y, test_y, 10, seed=0)
    with pytest.raises(ConfigError, match="scenario.train_per_task: must be null or >= 1"):
        ClassIncremental(train_per_task=0)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"n_tasks": 3}, "scenario.n_tasks"),  # 3 does not divide 10
        ({"n_tasks": 3, "task_sizes": [4, 4, 3]}, "scenario.task_sizes"),  # sums to 11
        ({"n_tasks": 5, "class_order": [0, 1, 2, 3, 4, 5, 6, 7, 8, 8]}, "scenario.class_order"),
        ({"n_tasks": 5, "class_order": [0, 1, 2]}, "scenario.class_order"),
        ({"n_tasks": 5, "class_order": "shuffled"}, "scenario.class_order"),
    ],
)
def test_bad_splits_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        ClassIncremental(**kwargs).build(labels(10, 2), labels(10, 1), 10, seed=0)


# -- blurry ----------------------------------------------------------------------------------------
blurry_settings = st.tuples(
    st.integers(2, 30),  # classes
    st.integers(1, 6),  # class_per_episode
    st.floats(0.05, 1.0),  # p_novelty
    st.sampled_from([1.0, 0.5, 0.3]),  # p_sample
    st.integers(0, 10_000),  # seed
).filter(lambda s: s[1] <= s[0])


@settings(max_examples=80, deadline=None)
@given(blurry_settings)
def test_blurry_stream_follows_the_definition(params):
    num_classes, k, p_novelty, p_sample, seed = params
    train_y, test_y = labels(num_classes, 7, seed=1), labels(num_classes, 3, seed=2)
    scenario = Blurry(class_per_episode=k, p_novelty=p_novelty, p_sample=p_sample)
    tasks = scenario.build(train_y, test_y, num_classes, seed=seed)
    seen: list[int] = []
    for e, task in enumerate(tasks):
        assert task.id == e
        assert len(task.classes) == k and len(set(task.classes)) == k  # k distinct classes per episode
        new = [c for c in task.classes if c not in seen]
        if e == 0:
            assert len(new) == k
        seen += new
        # test set: every class seen so far, all of its test images
        expected = torch.nonzero(torch.isin(test_y, torch.tensor(seen))).flatten()
        assert torch.equal(torch.sort(task.test_index).values, expected)
        # train set: floor(p_sample * n_c) distinct images of each episode class, nothing else
        for c in task.classes:
            members = torch.nonzero(train_y == c).flatten()
            chosen = task.train_index[torch.isin(task.train_index, members)]
            assert len(chosen) == int(len(members) * p_sample)
        assert len(task.train_index) == len(torch.unique(task.train_index)) == k * int(7 * p_sample)
    assert sorted(seen) == list(range(num_classes))  # ends when every class has been seen ...
    last_new = [c for c in tasks[-1].classes if c not in [x for t in tasks[:-1] for x in t.classes]]
    assert last_new  # ... with the episode that brings the last unseen class
    again = scenario.build(train_y, test_y, num_classes, seed=seed)
    assert [t.classes for t in again] == [t.classes for t in tasks]
    assert all(torch.equal(a.train_index, b.train_index) for a, b in zip(again, tasks, strict=True))


def test_blurry_slots_are_new_with_probability_p_novelty():
    """Over many streams, a slot that could take an unseen class takes one with rate p_novelty."""
    p, offered, taken = 0.3, 0, 0
    for seed in range(300):
        episodes = Blurry(class_per_episode=3, p_novelty=p).episode_classes(20, torch.Generator().manual_seed(seed))
        seen = set(episodes[0])
        for episode in episodes[1:]:
            for c in episode:
                if len(seen) < 20:
                    offered += 1
                    taken += c not in seen
                seen.add(c)
    rate = taken / offered
    sd = (p * (1 - p) / offered) ** 0.5
    assert abs(rate - p) < 5 * sd, (rate, offered)


def test_blurry_with_one_class_per_episode_and_certain_novelty_is_class_incremental():
    tasks = Blurry(class_per_episode=1, p_novelty=1.0).build(labels(6, 4), labels(6, 2), 6, seed=0)
    assert len(tasks) == 6 and sorted(c for t in tasks for c in t.classes) == list(range(6))


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"p_novelty": 0.0}, "scenario.p_novelty"),  # the stream would never end
        ({"p_novelty": 1.5}, "scenario.p_novelty"),
        ({"p_sample": 0.0}, "scenario.p_sample"),
        ({"class_per_episode": 0}, "scenario.class_per_episode"),
    ],
)
def test_blurry_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        Blurry(**kwargs)


def test_blurry_rejects_more_slots_than_classes_and_empty_classes():
    with pytest.raises(ConfigError, match="scenario.class_per_episode"):
        Blurry(class_per_episode=11).build(labels(10, 2), labels(10, 1), 10, seed=0)
    with pytest.raises(ConfigError, match="scenario.p_sample"):
        Blurry(p_sample=0.1).build(labels(10, 5), labels(10, 1), 10, seed=0)  # floor(0.1 * 5) = 0
