"""The replay buffer: reservoir semantics, class balance, sampling, state and byte accounting."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.continual.buffer import ReplayBuffer, bytes_per_sample, capacity_for_bytes
from sparseforge.errors import ConfigError


def stream(n: int, num_classes: int = 10, shape=(1, 2, 2), num_logits: int = 0):
    """Example i has pixel value i % 256, label i % num_classes, id i (kept in the task field)."""
    ids = torch.arange(n)
    x = (ids % 256).to(torch.uint8).view(n, *[1] * len(shape)).expand(n, *shape).contiguous()
    logits = torch.arange(n * num_logits, dtype=torch.float32).view(n, num_logits) if num_logits else None
    return x, ids % num_classes, ids, logits


def feed(buffer: ReplayBuffer, n: int, batch_sizes, **kw):
    x, y, ids, logits = stream(n, **kw)
    start = 0
    for b in batch_sizes:
        if start >= n:
            break
        sl = slice(start, min(start + b, n))
        buffer.add(x[sl], y[sl], ids[sl], logits[sl] if logits is not None else None)
        start = sl.stop
    return buffer


def stored_ids(buffer: ReplayBuffer) -> list[int]:
    return sorted(buffer.task[buffer.valid].tolist())


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(1, 40),
    n=st.integers(1, 200),
    batch_sizes=st.lists(st.integers(1, 64), min_size=1, max_size=30),
    seed=st.integers(0, 2**31 - 1),
)
def test_batched_reservoir_equals_one_example_at_a_time(capacity, n, batch_sizes, seed):
    sizes = batch_sizes * (n // max(1, sum(batch_sizes)) + 1)
    batched = feed(ReplayBuffer(capacity, seed=seed), n, sizes)
    single = feed(ReplayBuffer(capacity, seed=seed), n, [1] * n)
    assert batched.seen == single.seen == n
    assert torch.equal(batched.valid, single.valid)
    # slot by slot the same example, not just the same set
    assert torch.equal(batched.task[batched.valid], single.task[single.valid])
    assert torch.equal(batched.x[batched.valid], single.x[single.valid])
    assert len(batched) == min(capacity, n)


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 5000),
    seen=st.integers(0, 10**12),
    n=st.integers(1, 600),
    seed=st.integers(0, 2**31 - 1),
)
def test_reservoir_slots_are_each_draw_times_its_stream_position_in_double_precision(capacity, seen, n, seed):
    """The slots are those of the tensor formula: floor(u * position) in float64, the next free
    slots while filling, -1 (kept out) at or past the capacity."""
    buffer = ReplayBuffer(capacity, seed=seed)
    buffer.seen = seen
    generator = torch.Generator()
    generator.set_state(buffer.generator.get_state())
    draws = torch.rand(n, generator=generator, dtype=torch.float64)
    expected = draws.mul_(torch.arange(seen + 1, seen + n + 1, dtype=torch.float64)).long()
    if seen < capacity:
        fill = min(n, capacity - seen)
        expected[:fill] = torch.arange(seen, seen + fill)
    expected = expected.masked_fill_(expected >= capacity, -1)
    assert buffer._reservoir_slots(n) == expected.tolist()
    assert torch.equal(buffer.generator.get_state(), generator.get_state())  # the same draws consumed


def test_reservoir_keeps_every_example_with_equal_probability():
    capacity, n, trials = 10, 50, 600
    counts = torch.zeros(n)
    for seed in range(trials):
        b = feed(ReplayBuffer(capacity, seed=seed), n, [7] * 8)  # batches, with in-batch slot clashes
        counts[stored_ids(b)] += 1
    expected = trials * capacity / n  # 120
    sd = (trials * (capacity / n) * (1 - capacity / n)) ** 0.5  # ~9.8
    assert counts.sum() == trials * capacity
    assert (counts - expected).abs().max() < 5 * sd, counts


def test_class_balanced_gives_each_seen_class_an_equal_share():
    b = ReplayBuffer(100, policy="class_balanced", seed=0)
    x, y, ids, _ = stream(1000, num_classes=10)
    for task in range(5):  # classes arrive two at a time, as in a 5x2 split
        members = torch.nonzero((y == 2 * task) | (y == 2 * task + 1)).flatten()
        for chunk in members.split(32):
            b.add(x[chunk], y[chunk], ids[chunk])
        counts = torch.bincount(b.y[b.valid], minlength=10)[: 2 * task + 2]
        assert counts.sum() == 100
        assert counts.max() - counts.min() <= 1, counts
    assert counts.tolist() == [10] * 10


@settings(max_examples=80, deadline=None)
@given(
    capacity=st.integers(1, 40),
    labels=st.lists(st.integers(0, 7), min_size=1, max_size=300),
    batch_sizes=st.lists(st.integers(1, 48), min_size=1, max_size=20),
    seed=st.integers(0, 2**31 - 1),
)
def test_class_balanced_holds_each_class_up_to_its_share_after_every_batch(capacity, labels, batch_sizes, seed):
    """Any label stream, any batching: after every batch each seen class holds min(share, seen)
    slots of its own examples, each at most once, and labels and bookkeeping agree."""
    b = ReplayBuffer(capacity, policy="class_balanced", seed=seed)
    y_all = torch.tensor(labels)
    ids = torch.arange(len(labels))
    x = (ids % 256).to(torch.uint8).view(-1, 1, 1, 1)
    order: list[int] = []  # classes in order of first appearance
    start, k = 0, 0
    while start < len(labels):
        sl = slice(start, start + batch_sizes[k % len(batch_sizes)])
        b.add(x[sl], y_all[sl], ids[sl])
        order += [c for c in dict.fromkeys(y_all[sl].tolist()) if c not in order]
        start, k = sl.stop, k + 1
        seen = torch.bincount(y_all[: sl.stop], minlength=8)
        base, extra = divmod(capacity, len(order))
        stored = b.task[b.valid]
        assert len(set(stored.tolist())) == len(stored) and bool((stored < sl.stop).all())  # seen, once
        assert torch.equal(y_all[stored], b.y[b.valid])  # each slot holds its example's label
        assert torch.equal(b.slot_label[b.valid], b.y[b.valid]) and bool((b.slot_label[~b.valid] == -1).all())
        held = torch.bincount(b.y[b.valid], minlength=8)
        for rank, c in enumerate(order):
            assert held[c] == min(base + (rank < extra), int(seen[c])), (c, held.tolist(), seen.tolist())


def test_class_balanced_keeps_a_uniform_sample_of_each_class():
    # 2 classes of 40 examples each, then 2 more classes shrink each share from 5 to 2 or 3.
    trials, counts = 400, torch.zeros(160)
    for seed in range(trials):
        b = ReplayBuffer(10, policy="class_balanced", seed=seed)
        x, y, ids, _ = stream(160, num_classes=4)
        for task in range(2):
            members = torch.nonzero((y == 2 * task) | (y == 2 * task + 1)).flatten()
            for chunk in members.split(9):
                b.add(x[chunk], y[chunk], ids[chunk])
        counts[stored_ids(b)] += 1
    # the first two classes in order of appearance get 3 slots, the others 2 (10 = 4 x 2 + 2)
    for c, share in ((0, 3), (1, 3), (2, 2), (3, 2)):
        per_example = counts[torch.arange(c, 160, 4)]
        expected = trials * share / 40
        sd = (trials * share / 40 * (1 - share / 40)) ** 0.5
        assert per_example.sum() == trials * share
        assert (per_example - expected).abs().max() < 5 * sd, (c, per_example)


def test_sample_draws_distinct_stored_examples_and_shards_across_ranks():
    b = feed(ReplayBuffer(50, seed=3), 500, [32] * 20)
    drawn = b.sample(20)
    assert len(drawn.slots) == 20 and len(set(drawn.slots.tolist())) == 20
    assert bool(b.valid[drawn.slots].all())
    assert torch.equal(drawn.raw, b.x[drawn.slots]) and torch.equal(drawn.y, b.y[drawn.slots])
    assert len(b.sample(500).slots) == 50  # never more than stored
    # DDP: identical generators on two ranks, each takes its share of one common draw
    ranks = [feed(ReplayBuffer(50, seed=3), 500, [32] * 20) for _ in range(2)]
    shares = [r.sample(8, rank=k, world_size=2).slots for k, r in enumerate(ranks)]
    whole = feed(ReplayBuffer(50, seed=3), 500, [32] * 20).sample(16).slots
    assert not set(shares[0].tolist()) & set(shares[1].tolist())
    assert sorted(shares[0].tolist() + shares[1].tolist()) == sorted(whole.tolist())
    assert torch.equal(ranks[0].generator.get_state(), ranks[1].generator.get_state())


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_state_dict_round_trip_continues_identically(policy):
    a = feed(ReplayBuffer(30, policy=policy, store_logits=True, seed=5), 200, [16] * 20, num_logits=3)
    blob = io.BytesIO()
    torch.save(a.state_dict(), blob)
    blob.seek(0)
    b = ReplayBuffer(30, policy=policy, store_logits=True, seed=999)
    b.load_state_dict(torch.load(blob, weights_only=True))  # checkpoints load with weights_only
    x, y, ids, logits = stream(400, num_logits=3)
    for chunk in torch.arange(200, 400).split(16):
        a.add(x[chunk], y[chunk], ids[chunk], logits[chunk])
        b.add(x[chunk], y[chunk], ids[chunk], logits[chunk])
        assert torch.equal(a.sample(8).slots, b.sample(8).slots)
    for field in ("x", "y", "task", "logits", "valid"):
        assert torch.equal(getattr(a, field), getattr(b, field))


def test_loading_a_buffer_of_another_size_names_the_key():
    a = feed(ReplayBuffer(30, seed=0), 50, [10] * 5)
    with pytest.raises(ConfigError, match="method.buffer_size"):
        ReplayBuffer(40, seed=0).load_state_dict(a.state_dict())


def test_byte_accounting_is_exact():
    shape, num_logits = (3, 32, 32), 10
    b = feed(ReplayBuffer(64, store_logits=True), 10, [10], shape=shape, num_logits=num_logits)
    per_sample = 3 * 32 * 32 * 1 + 2 * 8 + num_logits * 4  # uint8 image, int64 label + task, fp32 logits
    assert bytes_per_sample(shape, num_logits) == per_sample
    tensors = [b.x, b.y, b.task, b.logits]
    assert b.nbytes == sum(t.numel() * t.element_size() for t in tensors) == 64 * per_sample
    report = b.memory_report()
    assert report["bytes"] == 64 * per_sample and report["samples"] == 10 and report["bytes_per_sample"] == per_sample
    assert sum(report["bytes_by_field"].values()) == report["bytes"]
    # a byte budget turns into the largest capacity that fits
    assert capacity_for_bytes(64 * per_sample, shape, num_logits) == 64
    assert capacity_for_bytes(64 * per_sample - 1, shape, num_logits) == 63
    assert ReplayBuffer(5).nbytes == 0  # nothing allocated before the first batch


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="method.buffer_size"):
        ReplayBuffer(0)
    with pytest.raises(ConfigError, match="method.buffer_policy.*reservoir, class_balanced"):
        ReplayBuffer(10, policy="fifo")
    with pytest.raises(ValueError, match="uint8"):
        ReplayBuffer(10).add(
            torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)
        )
