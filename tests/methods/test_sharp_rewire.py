"""SHARP's rewiring: density back at target, kernel-level convs, the conv -> linear mapping."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from sparseforge.methods.sharp import rewire
from sparseforge.methods.sharp.learner import SharpLearner
from sparseforge.models import create_model


def _ranks(draw, n):
    return torch.tensor(draw(st.lists(st.sampled_from([0, 0, 1, 2, 3]), min_size=n, max_size=n)))


@st.composite
def layers(draw, conv: bool):
    n_out, n_in = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    shape = (n_out, n_in, 3, 3) if conv else (n_out, n_in)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    mask = rewire.random_mask(torch.empty(shape), draw(st.floats(0.05, 0.95)), g)
    return mask, _ranks(draw, n_in), _ranks(draw, n_out), g


@settings(max_examples=150, deadline=None)
@given(st.booleans().flatmap(layers), st.booleans())
def test_drop_then_regrow_keeps_the_count_and_the_rules(case, fallback):
    mask, in_ranks, out_ranks, g = case
    before = rewire.connections(mask)
    new_mask, stats = rewire.rewire_layer(mask, in_ranks, out_ranks, g, fallback_into_training=fallback)
    after = rewire.connections(new_mask)  # raises if a conv kernel is only partly connected
    if mask.dim() == 4:
        assert torch.equal(new_mask, rewire.full_mask(after, mask))
    removed, added = before & ~after, after & ~before
    idle_in, idle_out = (in_ranks == 0).view(1, -1), (out_ranks == 0).view(-1, 1)
    training_out = (out_ranks == 1).view(-1, 1)
    # exactly the idle -> non-idle links are dropped ...
    assert torch.equal(removed, before & idle_in & ~idle_out)
    assert not (after & idle_in & ~idle_out).any()
    # ... and as many regrown: into idle units first, then (fallback) into training units from
    # non-idle inputs; never into fine-tuning or frozen units
    kept = before & ~removed
    into_idle = int((~kept & idle_out).sum())
    into_training = int((~kept & training_out & ~idle_in).sum()) if fallback else 0
    assert not (added & ~idle_out & ~(training_out & ~idle_in)).any()
    assert int((added & ~idle_out).sum()) == stats.grown_into_training
    assert stats.dropped == int(removed.sum()) and stats.grown == int(added.sum())
    assert int((added & idle_out).sum()) == min(stats.dropped, into_idle)
    assert stats.grown == min(stats.dropped, into_idle + into_training)
    assert int(after.sum()) == int(before.sum()) - stats.shortfall
    if not fallback:
        assert stats.grown_into_training == 0


def _learner(name="sharp_mnistlike", classes=10, chans=1, size=28, **kw):
    torch.manual_seed(0)
    model = create_model(name, classes, chans, size)
    return model, SharpLearner(model, **kw)


def test_initial_masks_are_kernel_level_at_the_target_density_with_a_dense_first_conv():
    model, learner = _learner("sharp_vgg_small", 10, 3, 32)
    density = learner.masks.density_per_layer()
    assert density["conv_early.0"] == 1.0
    for layer in learner.layers[1:]:
        rewire.connections(learner.masks[layer.name])  # kernel-level
        assert abs(density[layer.name] - 0.4) < 0.05
    for layer in learner.layers:  # pruned weights are zero from the start
        assert not (layer.module.weight.detach()[~learner.masks[layer.name]] != 0).any()


@pytest.mark.parametrize("net", ["sharp_mnistlike", "sharp_vgg_small"])
def test_every_phase_start_keeps_each_layer_at_its_exact_count(net):
    shape = (10, 1, 28) if net == "sharp_mnistlike" else (10, 3, 32)
    model, learner = _learner(net, *shape, min_activation_perc=60)
    counts = learner.masks.nnz_per_layer()
    x = torch.rand(32, shape[1], shape[2], shape[2])
    dropped = 0
    for phase in range(1, 6):
        before = {n: learner.masks[n].clone() for n in counts}
        entry = learner.start_phase(0, phase, x)
        dropped += sum(s["dropped"] for s in entry["layers"].values())
        assert learner.masks.nnz_per_layer() == counts  # checked inside too (MaskSet.check)
        for layer in learner.layers:
            name, weight = layer.name, layer.module.weight.detach()
            grown = learner.masks[name] & ~before[name]
            assert not (weight[grown] != 0).any()  # new connections start at 0
            assert not (weight[~learner.masks[name]] != 0).any()
            if layer.is_conv:
                rewire.connections(learner.masks[name])
    assert dropped > 0  # the test exercised real rewiring


def test_an_idle_channel_loses_its_flattened_block_into_active_units():
    model, learner = _learner()
    hidden = learner.layers[2]
    assert hidden.name == "hidden.0" and hidden.in_group == 49
    channel_ranks = torch.ones(16, dtype=torch.long)
    channel_ranks[3] = 0
    out_ranks = torch.ones(500, dtype=torch.long)
    out_ranks[:50] = 0
    mask = learner.masks[hidden.name]
    in_ranks = rewire.input_ranks(hidden, channel_ranks, mask.shape[1])
    new, stats = rewire.rewire_layer(mask, in_ranks, out_ranks, torch.Generator().manual_seed(1))
    block = slice(3 * 49, 4 * 49)
    assert not new[50:, block].any()  # channel 3 feeds no active unit any more
    assert torch.equal(new[50:, : block.start], mask[50:, : block.start])
    assert stats.dropped == int(mask[50:, block].sum()) > 0 and stats.grown == stats.dropped
