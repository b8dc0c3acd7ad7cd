"""SHARP's short-term memory: 8-bit round trip, recent classes only, even replay sampling."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays

from sparseforge.methods.sharp.memory import ReplayBank, ShortTermMemory, dequantise, quantise

finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 40)), elements=finite))
def test_round_trip_error_is_at_most_half_a_step(values):
    a = torch.from_numpy(values)
    q, lo, hi = quantise(a)
    assert q.dtype == torch.uint8 and q.shape == a.shape
    assert lo == float(a.min()) and hi == float(a.max())
    back = dequantise(q, lo, hi)
    step = (hi - lo) / 255.0
    # half a quantisation step, plus float32 rounding of values up to 1e4 in magnitude
    bound = step / 2 + 4 * np.finfo(np.float32).eps * max(abs(lo), abs(hi), 1.0)
    assert float((back - a).abs().max()) <= bound


def test_extremes_are_exact_and_constant_input_round_trips():
    a = torch.tensor([[-3.0, 0.5, 7.0]])
    q, lo, hi = quantise(a)
    assert q[0, 0] == 0 and q[0, 2] == 255
    assert dequantise(q, lo, hi)[0, 0] == -3.0 and dequantise(q, lo, hi)[0, 2] == 7.0
    c = torch.full((4, 3), 2.5)
    qc, lo, hi = quantise(c)
    assert torch.equal(dequantise(qc, lo, hi), c)


def _fill(memory: ShortTermMemory, episode: int, classes, n: int = 5) -> None:
    for c in classes:
        memory.insert(episode, c, torch.rand(n, 4) + c)


def test_only_the_last_m_episodes_are_replayed_and_kept():
    memory = ShortTermMemory(per_class=3, num_episodes=1)
    _fill(memory, 0, [0, 1])
    memory.evict_before(0)
    assert memory.replay_classes(1) == [0, 1]
    _fill(memory, 1, [2, 3])
    assert memory.replay_classes(2) == [2, 3]  # episode 0's classes are not replayed any more
    memory.evict_before(1)
    assert sorted(memory.codes) == [2, 3]  # and not stored any more
    assert memory.samples == 6  # per_class caps what is stored

    two = ShortTermMemory(per_class=3, num_episodes=2)
    for e, classes in enumerate([[0, 1], [2, 3], [4, 5]]):
        _fill(two, e, classes)
        two.evict_before(e)
    assert two.replay_classes(3) == [2, 3, 4, 5]
    assert sorted(two.codes) == [2, 3, 4, 5]


def test_a_recurring_class_is_overwritten_by_its_latest_episode():
    memory = ShortTermMemory(per_class=2, num_episodes=1)
    memory.insert(0, 7, torch.zeros(2, 3))
    memory.insert(1, 7, torch.ones(2, 3) * 5)
    assert memory.episode_of[7] == 1
    assert memory.replay_classes(2) == [7] and memory.replay_classes(1) == []
    assert torch.allclose(memory.decoded(7), torch.full((2, 3), 5.0))


def test_nbytes_counts_codes_and_per_class_ranges():
    memory = ShortTermMemory(per_class=25, num_episodes=1)
    for c in (0, 1):
        memory.insert(0, c, torch.randn(30, 16, 7, 7))
    assert memory.nbytes == 2 * 25 * 16 * 7 * 7 + 2 * 8
    raw = ShortTermMemory(per_class=25, num_episodes=1)
    raw.insert(0, 0, torch.randint(0, 256, (25, 1, 28, 28), dtype=torch.uint8), already_quantised=True)
    assert raw.nbytes == 25 * 784 + 8
    assert torch.equal(raw.decoded(0), raw.codes[0].float())  # raw codes decode to the pixel values


def test_state_round_trip():
    memory = ShortTermMemory(per_class=4, num_episodes=1)
    _fill(memory, 3, [1, 5])
    other = ShortTermMemory(per_class=4, num_episodes=1)
    other.load_state_dict(memory.state_dict())
    assert other.episode_of == memory.episode_of and other.ranges == memory.ranges
    assert all(torch.equal(other.codes[c], memory.codes[c]) for c in memory.codes)


@pytest.mark.parametrize("batch_size,stored", [(8, 5), (7, 5), (20, 3)])
def test_replay_batches_spread_evenly_over_classes(batch_size, stored):
    memory = ShortTermMemory(per_class=stored, num_episodes=1)
    _fill(memory, 0, [3, 4], n=stored)
    bank = ReplayBank(memory, memory.replay_classes(1), "cpu")
    x, y = bank.sample(batch_size, torch.Generator().manual_seed(0))
    counts = torch.bincount(y, minlength=5)
    assert len(y) == batch_size and set(y.tolist()) == {3, 4}
    assert abs(int(counts[3]) - int(counts[4])) <= 1
    # every replayed row is a stored (dequantised) row of its own class
    for row, label in zip(x, y, strict=True):
        assert (bank.values[bank.classes.index(int(label))] == row).all(1).any()
    if batch_size // 2 <= stored:  # without replacement while a class has enough samples
        for c in (3, 4):
            rows = x[y == c]
            assert len(torch.unique(rows, dim=0)) == len(rows)
