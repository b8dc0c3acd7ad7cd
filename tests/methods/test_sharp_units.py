"""SHARP's unit ranks: the cosine threshold, activation-mass selection, promotion, freezing rule."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from sparseforge.methods.sharp import units
from sparseforge.models import create_model


def test_tau_matches_the_reference_values():
    # values listed in the reference notes (section 1.6a), K = 30
    for t, expected in ((2, 0.989), (5, 0.933), (10, 0.75), (15, 0.5)):
        assert units.tau(t, 30) == pytest.approx(expected, abs=5e-4)


def test_threshold_starts_high_and_anneals_to_the_floor():
    percents = [units.activation_percent(p, 30, 90) for p in range(1, 11)]
    assert percents[0] == percents[1] == pytest.approx(98.9, abs=0.05)  # phase 1 uses tau(2)
    assert all(a >= b for a, b in zip(percents, percents[1:], strict=False))
    assert percents[-1] == 90  # tau(10) = 0.75 < 0.9: the floor
    assert units.activation_percent(40, 30, 0) == 0  # t clamped at K: no climb back up


def test_selection_takes_the_shortest_prefix_of_activation_mass():
    scores = torch.tensor([1.0, 5.0, 0.5, 3.0, 0.5])
    ranks = torch.tensor([0, 0, 1, 1, 0])
    new = units.select_units(scores, ranks, 80.0)  # total 10, need 8: units 1 (5) and 3 (3)
    assert new.tolist() == [0, 1, 0, 1, 0]


def test_frozen_units_count_in_the_total_but_keep_their_rank():
    scores = torch.tensor([6.0, 3.0, 1.0])
    ranks = torch.tensor([4, 0, 0])  # unit 0 is frozen, carries 60% of the mass
    new = units.select_units(scores, ranks, 85.0)  # needs 8.5: units 0 and 1
    assert new.tolist() == [4, 1, 0]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=30).filter(lambda v: sum(v) > 0),
    st.floats(1, 100),
    st.randoms(use_true_random=False),
)
def test_selected_mass_reaches_the_threshold_minimally(values, percent, rnd):
    scores = torch.tensor(values, dtype=torch.float64)
    ranks = torch.tensor([rnd.choice([0, 1, 1, 2, 5]) for _ in values])
    new = units.select_units(scores, ranks, percent)
    candidates = ranks <= 1
    assert torch.equal(new[~candidates], ranks[~candidates])
    order = torch.argsort(scores, descending=True, stable=True)
    mass = torch.cumsum(scores[order], 0)
    target = mass[-1] * (percent / 100)
    # the selected candidates are exactly the candidates inside the shortest prefix reaching target
    length = next(k for k in range(1, len(values) + 1) if mass[k - 1] >= target)
    inside = torch.zeros(len(values), dtype=torch.bool)
    inside[order[:length]] = True
    assert torch.equal(new[candidates] == 1, inside[candidates])


def test_promotion_and_freezing_rule():
    ranks = torch.tensor([0, 1, 2, 3])
    assert units.promote(ranks).tolist() == [0, 2, 3, 4]
    net = create_model("sharp_mnistlike", 10, 1, 28)
    early, late = net.weight_layers()[0], net.weight_layers()[-1]
    # below the cut-off a unit freezes right after its episode; above, m episodes later
    assert units.frozen_units(early, torch.tensor([0, 1, 2, 3]), 1, True).tolist() == [False, False, True, True]
    assert units.frozen_units(late, torch.tensor([0, 1, 2, 3]), 1, True).tolist() == [False, False, False, True]
    # raw-input replay stores images, so early units follow the late rule
    assert units.frozen_units(early, torch.tensor([0, 1, 2, 3]), 1, False).tolist() == [False, False, False, True]


def test_idle_reinit_touches_only_idle_rows():
    net = create_model("sharp_mnistlike", 10, 1, 28)
    layer = net.weight_layers()[2]
    before = layer.module.weight.detach().clone()
    ranks = torch.zeros(500, dtype=torch.long)
    ranks[:300] = 2
    with torch.no_grad():
        layer.module.bias.fill_(1.0)
    units.reinit_idle_units(layer, ranks, torch.Generator().manual_seed(0))
    w = layer.module.weight.detach()
    assert torch.equal(w[:300], before[:300]) and not torch.equal(w[300:], before[300:])
    assert (layer.module.bias[300:] == 0).all() and (layer.module.bias[:300] == 1).all()


def upstream_reinit_std(weight: torch.Tensor, idle: torch.Tensor) -> float:
    """The std the authors' ``re_initialize_u0`` gets: torch's Kaiming-normal (fan_out, ReLU) on
    the slice ``weight[idle]``, computed with torch's own fan and gain functions."""
    _, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(weight[idle])
    return torch.nn.init.calculate_gain("relu") / fan_out**0.5


@pytest.mark.parametrize(
    ("layer_index", "n_idle", "expected"),
    [(2, 50, 0.200), (2, 400, 0.0707), (1, 4, 0.236)],  # 500-unit linear; 16-channel 3x3 conv
)
def test_idle_reinit_std_is_upstreams_fan_out_of_the_idle_slice(layer_index, n_idle, expected):
    net = create_model("sharp_mnistlike", 10, 1, 28)
    layer = net.weight_layers()[layer_index]
    weight = layer.module.weight
    ranks = torch.ones(weight.shape[0], dtype=torch.long)
    idle = torch.randperm(weight.shape[0], generator=torch.Generator().manual_seed(1))[:n_idle]
    ranks[idle] = 0
    formula = upstream_reinit_std(weight.detach(), ranks == 0)
    assert formula == pytest.approx(expected, rel=2e-3)
    assert units.idle_reinit_std(n_idle, weight.shape) == pytest.approx(formula, rel=1e-12)
    units.reinit_idle_units(layer, ranks, torch.Generator().manual_seed(0))
    fresh = weight.detach()[ranks == 0]
    # the empirical std of the fresh weights, within sampling error of the formula
    tolerance = 4 / (2 * fresh.numel()) ** 0.5
    assert float(fresh.std()) == pytest.approx(formula, rel=tolerance)
    # not the whole layer's fan-out (out x k^2), which gives weights sqrt(out / n_idle) times smaller
    whole_layer = units.idle_reinit_std(weight.shape[0], weight.shape)
    assert abs(float(fresh.std()) / whole_layer - 1) > 2 * tolerance
    # ... unless asked for: reinit_fan_out=layer
    units.reinit_idle_units(layer, ranks, torch.Generator().manual_seed(0), fan_out="layer")
    assert float(weight.detach()[ranks == 0].std()) == pytest.approx(whole_layer, rel=tolerance)
