"""Layer-wise densities: exact counts, RigL capping, the global budget, ERK against the formula."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.errors import ConfigError
from sparseforge.models import create_model
from sparseforge.sparsity import layer_densities, layer_nnz, select_layers, smallest_workable_density, solve_densities
from sparseforge.sparsity.distributions import raw_score, weight_shapes
from sparseforge.sparsity.masks import MaskSet
from sparseforge.sparsity.placement import initial_masks

linear_shape = st.tuples(st.integers(1, 300), st.integers(1, 300))
conv_shape = st.tuples(st.integers(1, 64), st.integers(1, 64), st.sampled_from([1, 3, 5]), st.sampled_from([1, 3]))
model_shapes = st.lists(st.one_of(linear_shape, conv_shape), min_size=1, max_size=8)


class Holder(nn.Module):
    """A module with just a weight of the given shape (what the engine reads)."""

    def __init__(self, shape):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(shape))


def as_layers(shapes):
    return {f"l{i}": Holder(s) for i, s in enumerate(shapes)}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shapes=model_shapes, density=st.floats(0.005, 1.0), distribution=st.sampled_from(["uniform", "er", "erk"]))
# Rounding is not monotonic: here 0.005 empties the conv layer although 0.00488 does not.
@example(shapes=[(41, 151), (4, 5, 1, 3)], density=0.005, distribution="uniform")
def test_counts_are_exact_integers_within_one_weight_and_the_global_budget_is_exact(shapes, density, distribution):
    named = {f"l{i}": s for i, s in enumerate(shapes)}
    sizes = {n: math.prod(s) for n, s in named.items()}
    try:
        counts = layer_nnz(named, density, distribution)
    except ConfigError as err:
        # Only legitimate when some layer would keep no weight; the message says what works.
        smallest = smallest_workable_density(named, distribution)
        assert smallest > density and "no weight" in str(err) and str(smallest) in str(err)
        assert min(layer_nnz(named, smallest, distribution).values()) >= 1
        return
    real = solve_densities(named, density, distribution)
    for n in named:
        assert isinstance(counts[n], int) and 1 <= counts[n] <= sizes[n]
        assert abs(counts[n] - real[n] * sizes[n]) < 1  # one rounding, per layer
    assert sum(counts.values()) == math.floor(density * sum(sizes.values()) + 0.5)  # global: exact
    # Placement puts exactly those counts into masks.
    layers = as_layers(shapes)
    masks = MaskSet(layers, initial_masks(layers, counts, "random", seed=3), counts)
    assert masks.nnz_per_layer() == counts
    masks.apply_()
    masks.check()


@settings(max_examples=150, deadline=None)
@given(shapes=model_shapes, density=st.floats(0.01, 0.99), distribution=st.sampled_from(["er", "erk"]))
def test_capping_makes_over_full_layers_dense_and_shares_one_scale_among_the_rest(shapes, density, distribution):
    named = {f"l{i}": s for i, s in enumerate(shapes)}
    real = solve_densities(named, density, distribution)
    scores = {n: raw_score(s, distribution) for n, s in named.items()}
    capped = [n for n in named if real[n] == 1.0]
    free = [n for n in named if n not in capped]
    assert all(0 < real[n] <= 1 + 1e-12 for n in named)
    if free:
        eps = {real[n] / scores[n] for n in free}
        assert max(eps) - min(eps) <= 1e-9 * max(eps)  # one ε for every uncapped layer
        # Only layers scoring at least as high as every uncapped one are capped (RigL's order).
        assert all(scores[c] >= max(scores[n] for n in free) for c in capped)
    sizes = {n: math.prod(s) for n, s in named.items()}
    assert sum(real[n] * sizes[n] for n in named) == pytest.approx(density * sum(sizes.values()), rel=1e-9)


def test_capped_layers_are_dense_in_the_masks():
    # A tiny 10-way head next to two big layers: ERK at density 0.5 must cap the head.
    named = {"big1": (512, 512), "big2": (512, 256), "head": (10, 4)}
    real = solve_densities(named, 0.5, "erk")
    assert real["head"] == 1.0 and real["big1"] < 0.5
    counts = layer_nnz(named, 0.5, "erk")
    assert counts["head"] == 40
    layers = as_layers(named.values())
    layers = dict(zip(named, layers.values(), strict=True))
    masks = MaskSet(layers, initial_masks(layers, counts, "random"), counts)
    assert bool(masks["head"].all())


def independent_erk(shapes: dict[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """ERK written from the formula, solved differently from the engine.

    Try capping the k highest-scoring layers for k = 0, 1, ...; the answer is the first k for
    which the scale ε = (D·ΣN − Σ_capped N) / Σ_free s·N keeps every free layer at or below 1.
    """
    names = list(shapes)
    n = {k: float(math.prod(v)) for k, v in shapes.items()}
    s = {k: float(sum(v)) / float(math.prod(v)) for k, v in shapes.items()}
    by_score = sorted(names, key=lambda k: -s[k])
    total = sum(n.values())
    for k in range(len(names) + 1):
        capped = set(by_score[:k])
        if k < len(names) and k > 0 and s[by_score[k]] == s[by_score[k - 1]]:
            continue  # RigL caps every layer tied at the top score together
        free = [x for x in names if x not in capped]
        if not free:
            return {x: 1.0 for x in names}
        eps = (density * total - sum(n[x] for x in capped)) / sum(s[x] * n[x] for x in free)
        if all(eps * s[x] <= 1.0 for x in free):
            return {x: 1.0 if x in capped else eps * s[x] for x in names}
    raise AssertionError("unreachable")


@pytest.mark.parametrize("density", [0.05, 0.1, 0.2, 0.5])
def test_erk_for_resnet18_matches_an_independent_calculation(density):
    model = create_model("resnet18_cifar", num_classes=100, in_chans=3, image_size=32)
    shapes = weight_shapes(select_layers(model))
    expected = independent_erk(shapes, density)
    got = layer_densities(model, density, "erk")
    assert list(got) == list(expected)
    for name in expected:
        n = math.prod(shapes[name])
        assert abs(got[name] * n - expected[name] * n) < 1, name  # the only difference: rounding once
    total = sum(math.prod(v) for v in shapes.values())
    assert sum(round(got[k] * math.prod(shapes[k])) for k in got) == math.floor(density * total + 0.5)


def test_er_ignores_kernel_size_and_power_scale_zero_is_uniform():
    assert raw_score((64, 32, 3, 3), "er") == raw_score((64, 32, 1, 1), "er") == (64 + 32) / (64 * 32)
    assert raw_score((64, 32, 3, 3), "erk") == pytest.approx((64 + 32 + 3 + 3) / (64 * 32 * 9))
    named = {"a": (300, 784), "b": (100, 300), "c": (10, 100)}
    assert solve_densities(named, 0.1, "erk", erk_power_scale=0.0) == pytest.approx(
        solve_densities(named, 0.1, "uniform")
    )


def test_layers_kept_dense_by_option_are_outside_the_budget():
    model = create_model("mlp", num_classes=10, in_chans=1, image_size=28, hidden_sizes=[300, 100])
    all_layers = layer_densities(model, 0.1, "uniform", dense_first_layer=True, dense_last_layer=True, all_layers=True)
    assert all_layers["features.1"] == 1.0 and all_layers["fc"] == 1.0
    assert all_layers["features.3"] == 0.1  # the budget applies to the sparse layers only, uncompensated
    sparse_only = layer_densities(model, 0.1, "uniform", dense_first_layer=True, dense_last_layer=True)
    assert list(sparse_only) == ["features.3"]


def test_layer_densities_builds_no_masks_and_leaves_weights_alone():
    model = create_model("small_cnn", num_classes=10, in_chans=3, image_size=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    densities = layer_densities(model, 0.05, "erk")
    assert set(densities) == {"features.0", "features.4", "features.8", "fc"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_density_that_empties_a_layer_names_the_layer_and_the_smallest_workable_density():
    model = create_model("mlp", num_classes=10, in_chans=1, image_size=28, hidden_sizes=[300, 100])
    with pytest.raises(ConfigError) as err:
        layer_densities(model, 0.0005, "uniform")
    message = str(err.value)
    assert "sparsity.density" in message and "'fc'" in message and "no weight" in message
    smallest = float(message.split("density >= ")[1].split()[0])
    assert min(layer_densities(model, smallest, "uniform").values()) > 0
    # Safe upward (the reason it is defined on the real targets): every higher density works ...
    for factor in (1.001, 1.01, 1.1, 1.5, 3.0):
        assert min(layer_densities(model, min(smallest * factor, 1.0), "uniform").values()) > 0
    # ... and it is tight: 1% less gives some layer less than one weight's worth of target.
    shapes = weight_shapes(select_layers(model))
    real = solve_densities(shapes, smallest * 0.99, "uniform")
    assert min(real[n] * math.prod(s) for n, s in shapes.items()) < 1


# -- Random_Pruning's uniform_plus and ERK_plus -------------------------------------------------------
def upstream_uniform_plus(sizes: dict[str, int], density: float, floor: float = 0.2) -> dict[str, float]:
    """Random_Pruning CIFAR/sparselearning/core.py Masking.init, mode uniform_plus, as densities."""
    names = list(sizes)
    first, last, total = names[0], names[-1], sum(sizes.values())
    if density >= floor:
        return {n: 1.0 if n == first else density for n in names}
    rest = (density * total - sizes[first] - floor * sizes[last]) / total  # all masked weights below
    return {n: 1.0 if n == first else floor if n == last else rest for n in names}


plus_case = st.tuples(
    st.lists(st.one_of(linear_shape, conv_shape), min_size=2, max_size=8),
    st.floats(0.01, 0.6),
    st.one_of(st.none(), st.floats(0.05, 1.0)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plus_case)
def test_uniform_plus_is_random_prunings_first_dense_classifier_floor_rest_uniform(case):
    shapes, density, fc = case
    named = {f"l{i}": s for i, s in enumerate(shapes)}
    sizes = {n: math.prod(s) for n, s in named.items()}
    expected = upstream_uniform_plus(sizes, density, 0.2 if fc is None else fc)
    if min(expected.values()) <= 0:
        with pytest.raises(ConfigError, match="too low for uniform_plus"):
            layer_nnz(named, density, "uniform_plus", fc_density=fc)
        return
    try:
        counts = layer_nnz(named, density, "uniform_plus", fc_density=fc)
    except ConfigError as err:  # a tiny layer rounds to no weight: the message says what works
        assert "no weight" in str(err) and any(expected[n] * sizes[n] < 1 for n in named)
        return
    first, last = "l0", f"l{len(shapes) - 1}"
    assert counts[first] == sizes[first]  # dense
    for n in named:
        assert isinstance(counts[n], int) and abs(counts[n] - expected[n] * sizes[n]) < 1, n
    if density >= (0.2 if fc is None else fc):
        assert abs(counts[last] - density * sizes[last]) < 1
    assert sum(counts.values()) == math.floor(sum(expected[n] * sizes[n] for n in named) + 0.5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plus_case)
def test_erk_plus_fixes_the_classifier_and_spends_the_rest_of_the_budget_on_erk(case):
    shapes, density, fc = case
    fc_density = 1.0 if fc is None else fc
    named = {f"l{i}": s for i, s in enumerate(shapes)}
    sizes = {n: math.prod(s) for n, s in named.items()}
    last, total = f"l{len(shapes) - 1}", sum(sizes.values())
    rest = (density * total - fc_density * sizes[last]) / (total - sizes[last])  # ImageNet/core.py ERK_plus
    if rest <= 0:
        with pytest.raises(ConfigError, match="too low for erk_plus"):
            layer_nnz(named, density, "erk_plus", fc_density=fc)
        return
    others = {n: s for n, s in named.items() if n != last}
    real = {**solve_densities(others, rest, "erk"), last: fc_density}
    assert solve_densities(named, density, "erk_plus", fc_density=fc) == pytest.approx(real)
    try:
        counts = layer_nnz(named, density, "erk_plus", fc_density=fc)
    except ConfigError as err:
        assert "no weight" in str(err) and any(real[n] * sizes[n] < 1 for n in named)
        return
    for n in named:
        assert abs(counts[n] - min(real[n], 1.0) * sizes[n]) < 1, n
    if rest <= 1:  # the classifier is charged to the budget, which is met exactly
        assert sum(counts.values()) == math.floor(density * total + 0.5)


def test_uniform_plus_on_resnet18_at_0_05_and_the_first_layer_and_classifier():
    model = create_model("resnet18_cifar", 10, 3, 32)
    got = layer_densities(model, 0.05, "uniform_plus")
    names = list(got)
    assert names[0] == "conv1" and names[-1] == "fc" and got["conv1"] == 1.0
    assert got["fc"] == pytest.approx(0.2, abs=1 / 5120)
    sizes = {n: math.prod(m.weight.shape) for n, m in select_layers(model).items()}
    rest = upstream_uniform_plus(sizes, 0.05)["layer1.0.conv1"]
    assert 0.0497 < rest < 0.05 and all(abs(got[n] - rest) * sizes[n] < 1 for n in names[1:-1])
    erk_plus = layer_densities(model, 0.05, "erk_plus", fc_density=0.5)
    assert erk_plus["fc"] == pytest.approx(0.5, abs=1 / 5120)


def test_plus_distributions_refuse_options_that_would_move_their_fixed_layers():
    from sparseforge.sparsity.options import SparsityOptions

    for values, key in (
        ({"distribution": "uniform_plus", "dense_first_layer": True}, "sparsity.dense_first_layer"),
        ({"distribution": "uniform_plus", "dense_first_conv": True}, "sparsity.dense_first_conv"),
        ({"distribution": "erk_plus", "dense_last_layer": True}, "sparsity.dense_last_layer"),
        ({"distribution": "erk", "fc_density": 0.5}, "sparsity.fc_density"),
        ({"distribution": "erk_plus", "fc_density": 1.5}, "sparsity.fc_density"),
    ):
        with pytest.raises(ConfigError, match=key):
            SparsityOptions.from_values({"update_rule": "static", **values})
    SparsityOptions.from_values({"update_rule": "static", "distribution": "erk_plus", "dense_first_conv": True})


def test_dense_first_conv_keeps_a_conv_stem_dense_but_not_an_mlps_first_layer():
    cnn = create_model("resnet18_cifar", 10, 3, 32)
    assert "conv1" not in select_layers(cnn, dense_first_conv=True) and "conv1" in select_layers(cnn)
    mlp = create_model("mlp", 10, 1, 28)
    assert list(select_layers(mlp, dense_first_conv=True)) == list(select_layers(mlp))


def test_a_classifier_density_that_empties_the_classifier_asks_for_a_higher_fc_density():
    # erk_plus fixes the classifier at fc_density: 0.01 of 20 weights is no weight at any density
    shapes = {"l0": (100, 10), "l1": (2, 10)}
    assert smallest_workable_density(shapes, "erk_plus", fc_density=0.01) is None
    with pytest.raises(ConfigError, match=r"layer 'l1'.*a higher sparsity.fc_density"):
        layer_nnz(shapes, 0.5, "erk_plus", fc_density=0.01)
