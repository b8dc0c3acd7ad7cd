"""CL-with-DST's drop-and-grow: exact counts per layer, frozen weights never grown, unfired
exploration, the drop-rate schedule's floor, frozen weights untouched by any optimizer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.sparsity.drop_grow import (
    DropCriterion,
    GrowCriterion,
    drop_and_grow,
    drop_mask,
    momentum_scores,
    n_to_move,
)
from sparseforge.sparsity.masks import MaskSet
from sparseforge.sparsity.schedule import DropSchedule
from sparseforge.utils.seeding import seeded_generator


def layers_with_masks(shapes, density: float, frozen_share: float, seed: int):
    """Linear layers of the given shapes, random masks at ``density``, random frozen sets, and a
    random dense gradient per layer."""
    g = seeded_generator(seed)
    layers, masks, frozen, grads = {}, {}, {}, {}
    for i, (n_out, n_in) in enumerate(shapes):
        layer = nn.Linear(n_in, n_out, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(n_out, n_in, generator=g))
        name = f"l{i}"
        layers[name] = layer
        n = n_out * n_in
        k = max(1, round(density * n))
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=g)[:k]] = True
        masks[name] = mask.view(n_out, n_in)
        frozen[name] = torch.rand(n_out, n_in, generator=g) < frozen_share
        grads[name] = torch.randn(n_out, n_in, generator=g)
    ms = MaskSet(layers, masks)
    ms.apply_()
    return ms, frozen, grads


def adam_with_state(ms: MaskSet) -> torch.optim.Optimizer:
    opt = torch.optim.Adam([ms.weight(n) for n in ms], lr=1e-3)
    for name in ms:
        ms.weight(name).grad = torch.randn_like(ms.weight(name))
    opt.step()
    return opt


shapes = st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12)), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(
    shapes=shapes,
    density=st.floats(0.05, 0.9),
    frozen_share=st.floats(0.0, 0.9),
    rate=st.floats(0.0, 0.99),
    drop=st.sampled_from(list(DropCriterion)),
    grow=st.sampled_from(list(GrowCriterion)),
    seed=st.integers(0, 2**16),
)
def test_counts_are_exact_per_layer_and_frozen_weights_are_never_grown(
    shapes, density, frozen_share, rate, drop, grow, seed
):
    ms, frozen, grads = layers_with_masks(shapes, density, frozen_share, seed)
    optimizer = adam_with_state(ms)
    before = {n: ms[n].clone() for n in ms}
    new, counts = drop_and_grow(ms, frozen, rate, drop, grow, grads, optimizer, key=(seed, 1, 2))
    for name in ms:
        old, mask, locked = before[name], new.get(name, before[name]), frozen[name]
        active, free = int(old.count_nonzero()), int((~old & ~locked).count_nonzero())
        n = min(math.ceil(rate * active), free)
        assert counts[name]["moved"] == n == n_to_move(active, free, rate)
        assert int(mask.count_nonzero()) == active  # the layer keeps its count exactly
        kept = drop_mask(drop, old, ms.weight(name), n, grads[name])
        assert int((old & ~kept).count_nonzero()) == n  # exactly n dropped ...
        grown = mask & ~kept
        assert int(grown.count_nonzero()) == n  # ... and exactly n grown
        assert not (grown & locked).any()  # never into a weight an earlier task owns
        assert counts[name]["regrown"] == int((grown & old).count_nonzero())


@settings(max_examples=100, deadline=None)
@given(shapes=shapes, density=st.floats(0.05, 0.5), rates=st.lists(st.floats(0.05, 0.9), min_size=1, max_size=6))
def test_unfired_grows_only_weights_never_active_in_the_task_until_they_run_out(shapes, density, rates):
    ms, _, _ = layers_with_masks(shapes, density, 0.0, seed=3)
    for update, rate in enumerate(rates):
        fired_before = {n: ms.fired[n].clone() for n in ms}
        new, counts = drop_and_grow(
            ms, None, rate, DropCriterion.magnitude, GrowCriterion.random_unfired, key=(0, update)
        )
        for name, mask in new.items():
            grown = mask & ~ms[name]  # newly active (a regrown just-dropped weight was active before)
            unfired_left = int((~fired_before[name]).count_nonzero())
            n = counts[name]["moved"]
            if n <= unfired_left:  # enough never-fired candidates: all growth goes there
                assert not (mask & ~ms[name] & fired_before[name]).any()
                assert int((mask & ~fired_before[name]).count_nonzero()) == n
            else:  # every never-fired weight is grown, the rest comes from the others
                assert (mask | fired_before[name]).all()
            assert int(grown.count_nonzero()) <= n
        ms.set_masks(new)


def test_set_drops_half_from_the_smallest_positive_and_half_from_the_negatives_closest_to_zero():
    layer = nn.Linear(10, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-5.0, -0.3, -0.1, -2.0, 0.2, 0.05, 3.0, 0.7, 1.5, -1.0]]))
    mask = torch.ones(1, 10, dtype=torch.bool)
    kept = drop_mask(DropCriterion.set, mask, layer.weight, 5)
    dropped = (~kept).nonzero()[:, 1].tolist()
    assert sorted(dropped) == [1, 2, 4, 5, 7]  # positives 0.05, 0.2, 0.7; negatives -0.1, -0.3
    # too few negatives: the positive side takes their share, so the count stays exact
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-0.5, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]]))
    assert int((~drop_mask(DropCriterion.set, mask, layer.weight, 6)).count_nonzero()) == 6


def test_taylor_drops_the_smallest_first_order_loss_change():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.1, 2.0, 0.5]]))
    grad = torch.tensor([[0.01, 10.0, 0.001, 1.0]])  # (w*g)^2: 1e-4, 1, 4e-6, 0.25
    kept = drop_mask(DropCriterion.taylor_fo, torch.ones(1, 4, dtype=torch.bool), layer.weight, 2, grad)
    assert kept.tolist() == [[False, True, False, True]]  # magnitude would have dropped 0.1 and 0.5


def test_gradient_and_momentum_growth_pick_the_largest_scores_outside_the_frozen_weights():
    layer = nn.Linear(6, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 2.0]]))
    ms = MaskSet({"l": layer}, {"l": torch.tensor([[False, False, False, False, True, True]])})
    frozen = {"l": torch.tensor([[True, False, False, False, False, False]])}
    grad = {"l": torch.tensor([[9.0, 0.5, 3.0, 1.0, 0.0, 0.0]])}
    new, _ = drop_and_grow(ms, frozen, 0.5, DropCriterion.magnitude, GrowCriterion.gradient, grad)
    assert new["l"].tolist() == [[False, False, True, False, False, True]]  # 9.0 is frozen: 3.0 wins
    opt = torch.optim.SGD([layer.weight], lr=0.1, momentum=0.9)
    layer.weight.grad = torch.tensor([[9.0, -4.0, 3.0, 1.0, 0.0, 0.0]])
    opt.step()
    new, _ = drop_and_grow(ms, frozen, 0.5, DropCriterion.magnitude, GrowCriterion.momentum, None, opt)
    assert new["l"].tolist() == [[False, True, False, False, False, True]]  # |-4| is the largest free


def test_momentum_scores_read_adam_moments_or_the_sgd_buffer_and_refuse_plain_sgd():
    w = nn.Parameter(torch.zeros(3))
    adam = torch.optim.Adam([w], lr=0.1)
    w.grad = torch.tensor([1.0, -2.0, 0.5])
    adam.step()
    state = adam.state[w]
    expected = (state["exp_avg"] / (state["exp_avg_sq"].sqrt() + 1e-8)).abs()
    assert torch.equal(momentum_scores(adam, w), expected)
    sgd = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    sgd.step()
    assert torch.equal(momentum_scores(sgd, w), w.grad.abs())
    plain = torch.optim.SGD([w], lr=0.1)
    plain.step()
    with pytest.raises(ValueError, match="momentum"):
        momentum_scores(plain, w)


@settings(max_examples=50, deadline=None)
@given(horizon=st.integers(1, 5000), delta_t=st.integers(1, 500))
def test_the_drop_rate_anneals_from_half_to_its_floor(horizon, delta_t):
    schedule = DropSchedule(delta_t, 0.5, "cosine", 1.0, floor=0.005)
    assert schedule.fraction_at(0, horizon) == 0.5
    assert schedule.fraction_at(horizon, horizon) == pytest.approx(0.005, abs=1e-15)  # hits the floor
    rates = [schedule.fraction_at(t, horizon) for t in range(0, horizon + 1, max(1, horizon // 50))]
    assert all(0.005 - 1e-15 <= r <= 0.5 for r in rates)
    assert rates == sorted(rates, reverse=True)
    steps = schedule.update_steps(horizon)  # every delta_t steps until the task ends, no 75% stop
    assert steps == list(range(delta_t, horizon, delta_t))


def test_without_a_floor_the_schedule_is_rigls_cosine():
    rigl = DropSchedule(100, 0.3, "cosine", 0.75)
    for t in (0, 100, 2500, 7500):
        assert rigl.fraction_at(t, 10_000) == 0.3 / 2 * (1 + math.cos(math.pi * min(t / 7500, 1.0)))


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
    ],
    ids=["adamw", "adam_l2", "sgd_nesterov"],
)
def test_frozen_weights_do_not_move_under_weight_decay_or_momentum(make):
    """Momentum accumulated before the freeze (optimizer not restarted) and weight decay would
    move a weight whose gradient is only zeroed; MaskSet's gradient masks undo the step there."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16, bias=False), nn.ReLU(), nn.Linear(16, 4, bias=False))
    layers = {"0": model[0], "2": model[2]}
    ms = MaskSet(layers, {n: torch.rand_like(m.weight) < 0.5 for n, m in layers.items()})
    ms.apply_()
    optimizer = make(model.parameters())
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    for _ in range(3):  # build up momentum everywhere first
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        ms.before_step(mask_pruned=False)
        optimizer.step()
        ms.after_step()
    frozen = {n: ms[n] & (torch.rand_like(m.weight) < 0.5) for n, m in layers.items()}
    ms.set_grad_masks({n: ~f for n, f in frozen.items()})
    values = {n: layers[n].weight.detach().clone() for n in layers}
    for _ in range(5):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        ms.before_step(mask_pruned=False)
        optimizer.step()
        ms.after_step()
    for n in layers:
        w = layers[n].weight.detach()
        assert torch.equal(w[frozen[n]], values[n][frozen[n]])
        assert not torch.equal(w[ms[n] & ~frozen[n]], values[n][ms[n] & ~frozen[n]])  # the others train
        assert torch.count_nonzero(w[~ms[n]]) == 0
