"""SparCL's three components in plain PyTorch: TDM (sparsity rule), DGM (gradient policy), DDR."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.continual.data_removal import NEVER_LEARNED, DataRemoval
from sparseforge.errors import ConfigError
from sparseforge.sparsity import DynamicGradientMasking, Sparsifier
from sparseforge.sparsity.options import SparsityOptions
from sparseforge.sparsity.rules.tdm import TDMSchedule

RELEASE_TDM = {
    "every_epochs": 5,
    "phase_epochs": [5, 45],
    "prune_offsets": [0.0, -0.01, 0.0],
    "grow_offsets": [0.01, 0.0, 0.0],
}


def two_layer_net() -> nn.Module:
    torch.manual_seed(0)
    # 400 and 800 weights: at density 0.25 exactly 100 and 200, 1% = 4 and 8 weights
    return nn.Sequential(nn.Linear(20, 20, bias=False), nn.ReLU(), nn.Linear(20, 40, bias=False))


def tdm_sparsifier(model, **tdm) -> Sparsifier:
    return Sparsifier(
        model,
        update_rule="tdm",
        density=0.25,
        distribution="uniform",
        placement="magnitude",
        regrow_dropped=True,
        tdm={**RELEASE_TDM, **tdm},
        account_flops=False,
    )


def fake_step(sp: Sparsifier, model: nn.Module, optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    optimizer.zero_grad()
    model(torch.randn(8, 20, generator=g)).pow(2).sum().backward()
    sp.before_optimizer_step(optimizer)
    optimizer.step()
    sp.after_optimizer_step(optimizer)


# -- TDM ---------------------------------------------------------------------------------------------
def test_tdm_schedule_counts_match_the_release_table():
    # The release's table for a 0.75 profile, on a layer of 1000 weights (base 250 = 25%):
    s = TDMSchedule(**RELEASE_TDM)
    assert [e for e in range(50) if s.is_update_epoch(e)] == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]
    assert s.counts(250, 1000, 250, 0) == (250, 260)  # task start: +1% of the layer
    assert s.counts(250, 1000, 260, 5) == (240, 250)  # drop 2%, regrow 1%
    assert s.counts(250, 1000, 250, 10) == (240, 250)  # swap 1%
    assert s.counts(250, 1000, 250, 40) == (240, 250)
    assert s.counts(250, 1000, 250, 45) == (250, 250)  # frozen


def test_every_tdm_update_lands_on_the_scheduled_density_and_restarts_per_task():
    model = two_layer_net()
    sp = tdm_sparsifier(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sizes = {"0": 400, "2": 800}
    assert sp.layer_nnz() == {"0": 100, "2": 200}
    # the expected count after each update epoch, derived by hand from the release's table
    expected = {0: 1.04, 5: 1.0, 10: 1.0, 15: 1.0, 20: 1.0, 25: 1.0, 30: 1.0, 35: 1.0, 40: 1.0, 45: 1.0}
    step = 0
    for task in range(3):
        for epoch in range(50):
            before = copy.deepcopy(sp.masks.masks)
            stats = sp.epoch_update(epoch, opt)
            if epoch in expected:
                for name, n in sizes.items():
                    assert sp.layer_nnz()[name] == round(expected[epoch] * n // 4), (task, epoch, name)
                sp.check()  # exact counts recorded, pruned weights zero
            else:
                assert stats is None and all(torch.equal(before[n], sp.masks[n]) for n in before)
            if epoch in (0, 5):  # 1%/2% moved at task start and at the shrink, every task again
                assert stats is not None and stats["epoch_in_task"] == epoch
            if epoch == 45:
                assert stats is None  # topology frozen for the last epochs
            fake_step(sp, model, opt, step)
            step += 1


def test_tdm_drops_lowest_importance_and_grows_at_zero_among_inactive():
    model = two_layer_net()
    sp = tdm_sparsifier(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp.epoch_update(0, opt)  # +1%
    for s in range(3):
        fake_step(sp, model, opt, s)
    grads = {n: sp.rule.last_grads[n].clone() for n in sp.masks}
    old = {n: sp.masks[n].clone() for n in sp.masks}
    weights = {n: sp.masks.weight(n).detach().clone() for n in sp.masks}
    sp.epoch_update(5, opt)  # drop 2%, regrow 1%
    n_drop = {"0": 104 - 96, "2": 208 - 192}  # from 26% down to 24% of the layer
    for name in sp.masks:
        importance = weights[name].abs() + 0.5 * grads[name].abs()
        new, after = sp.masks[name], sp.masks.weight(name).detach()
        assert bool((weights[name][old[name]] != 0).all())  # (so a restart is visible as a zero)
        # dropped: left the mask, or dropped and regrown in the same update (restarted at 0)
        restarted = old[name] & new & (after == 0)
        dropped = (old[name] & ~new) | restarted
        lowest = torch.zeros_like(dropped).flatten()
        lowest[importance.masked_fill(~old[name], math.inf).flatten().argsort()[: n_drop[name]]] = True
        assert torch.equal(dropped, lowest.view_as(dropped))  # exactly the lowest |w| + 0.5|g|
        grown = (new & ~old[name]) | restarted
        assert int(grown.sum()) == n_drop[name] // 2
        assert bool((after[grown] == 0).all())  # new connections start at 0
        state = opt.state[sp.masks.weight(name)]["momentum_buffer"]
        assert bool((state[grown] == 0).all())  # and with zeroed momentum
        kept = old[name] & new & ~restarted
        assert torch.equal(after[kept], weights[name][kept])


def test_tdm_gradient_is_the_one_the_optimizer_saw_post_dgm():
    for source in ("post_dgm", "pre_dgm"):
        model = two_layer_net()
        sp = tdm_sparsifier(model, grad_source=source)
        sp.gradient_policy = DynamicGradientMasking(gradient_sparsity=0.9, refresh_every=30)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        opt.zero_grad()
        model(torch.randn(4, 20)).pow(2).sum().backward()
        raw = {n: sp.masks.weight(n).grad.clone() for n in sp.masks}
        sp.before_optimizer_step(opt)
        for n in sp.masks:
            seen = raw[n] * sp.masks[n]
            if source == "post_dgm":
                seen = seen * sp.masks.grad_masks[n]
                assert torch.equal(sp.rule.last_grads[n], sp.masks.weight(n).grad)  # what optimizer.step gets
            assert torch.equal(sp.rule.last_grads[n], seen)


def test_tdm_state_resumes_to_the_same_updates():
    def run(split: bool):
        model = two_layer_net()
        sp = tdm_sparsifier(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        step = 0
        for epoch in range(12):
            if split and epoch == 6:  # "restart": a fresh sparsifier + model loaded from the state
                state, weights = sp.state_dict(), copy.deepcopy(model.state_dict())
                model = two_layer_net()
                model.load_state_dict(weights)
                sp = tdm_sparsifier(model)
                sp.load_state_dict(state)
                opt = torch.optim.SGD(model.parameters(), lr=0.1)
            sp.epoch_update(epoch % 10, opt)
            for _ in range(2):
                fake_step(sp, model, opt, step)
                step += 1
        return {n: sp.masks[n].clone() for n in sp.masks}, model.state_dict()

    masks_a, weights_a = run(False)
    masks_b, weights_b = run(True)
    assert all(torch.equal(masks_a[n], masks_b[n]) for n in masks_a)
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


@pytest.mark.parametrize(
    "tdm, key",
    [
        ({"prune_offsets": [0.0, 0.0]}, "sparsity.tdm.prune_offsets"),
        ({"phase_epochs": [45, 5]}, "sparsity.tdm.phase_epochs"),
        ({"every_epochs": 0}, "sparsity.tdm.every_epochs"),
        ({"grad_source": "dense"}, "sparsity.tdm.grad_source"),
    ],
)
def test_bad_tdm_options_name_the_key(tdm, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        SparsityOptions.from_values(dict(update_rule="tdm", density=0.25, tdm={**RELEASE_TDM, **tdm}))


# -- DGM ---------------------------------------------------------------------------------------------
@st.composite
def dgm_case(draw):
    n_out, n_in = draw(st.integers(2, 30)), draw(st.integers(2, 30))
    density = draw(st.sampled_from([0.05, 0.1, 0.25, 0.5, 1.0]))
    sparsity = draw(st.sampled_from([0.0, 0.5, 0.8, 0.9, 0.95]))
    relative_to = draw(st.sampled_from(["layer", "active"]))
    return n_out, n_in, density, sparsity, relative_to, draw(st.integers(0, 2**16))


@settings(max_examples=40, deadline=None)
@given(dgm_case())
def test_dgm_keeps_exactly_the_top_gradients_among_active_weights(case):
    n_out, n_in, density, gs, relative_to, seed = case
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(n_in, n_out, bias=False))
    n_active = max(1, math.floor(density * n_out * n_in + 0.5))
    try:
        sp = Sparsifier(model, update_rule="static", density=density, distribution="uniform", account_flops=False)
    except ConfigError:
        return  # a density that leaves the layer empty: refused up front, nothing to mask
    dgm = DynamicGradientMasking(gradient_sparsity=gs, refresh_every=30, relative_to=relative_to)
    sp.gradient_policy = dgm
    model(torch.randn(3, n_in)).pow(2).sum().backward()
    grad = model[0].weight.grad.clone()
    sp.before_optimizer_step()
    mask, gmask = sp.masks["0"], sp.masks.grad_masks["0"]
    assert int(mask.sum()) == n_active
    of = n_out * n_in if relative_to == "layer" else n_active
    k = min(n_active, math.floor((1 - gs) * of + 0.5))
    assert int(gmask.sum()) == k  # exact count
    assert bool((gmask <= mask).all())  # only active weights keep a gradient
    assert int((model[0].weight.grad != 0).logical_and(~gmask).sum()) == 0  # the rest is zeroed
    if 0 < k < n_active:
        kept, frozen = grad.abs()[gmask], grad.abs()[mask & ~gmask]
        assert kept.min() >= frozen.max()


def test_release_semantics_80_percent_of_active_weights_at_density_025():
    model = nn.Sequential(nn.Linear(40, 100, bias=False))  # 4000 weights, 1000 active
    sp = Sparsifier(model, update_rule="static", density=0.25, distribution="uniform", account_flops=False)
    sp.gradient_policy = DynamicGradientMasking(gradient_sparsity=0.8, refresh_every=30)
    model(torch.randn(5, 40)).sum().backward()
    sp.before_optimizer_step()
    assert int(sp.masks.grad_masks["0"].sum()) == 800  # 20% of the layer = 80% of the active weights


def test_dgm_refreshes_on_the_configured_iterations_and_reuses_the_mask_between():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10, bias=False))
    sp = Sparsifier(model, update_rule="static", density=0.5, distribution="uniform", account_flops=False)
    dgm = DynamicGradientMasking(gradient_sparsity=0.8, refresh_every=3)
    sp.gradient_policy = dgm
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    refreshed, masks = [], []
    for _epoch in range(2):
        dgm.start_epoch()
        for _ in range(7):
            opt.zero_grad()
            model(torch.randn(4, 10)).pow(2).sum().backward()
            sp.before_optimizer_step(opt)
            refreshed.append(dgm.refreshed)
            masks.append(sp.masks.grad_masks["0"].clone())
            opt.step()
            sp.after_optimizer_step(opt)
    pattern = [True, False, False, True, False, False, True]
    assert refreshed == pattern * 2  # every 3 iterations, the counter restarting each epoch
    for i, r in enumerate(refreshed):
        if not r:
            assert torch.equal(masks[i], masks[i - 1])  # reused in between
    assert dgm.refreshes == 6


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.1),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    ],
    ids=["sgd", "sgd_momentum_wd", "nesterov_wd", "adamw"],
)
def test_gradient_masked_weights_do_not_move_whatever_the_optimizer(make_optimizer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16, bias=False), nn.ReLU(), nn.Linear(16, 4, bias=False))
    sp = Sparsifier(model, update_rule="static", density=0.5, distribution="uniform", account_flops=False)
    sp.gradient_policy = DynamicGradientMasking(gradient_sparsity=0.8, refresh_every=2)
    opt = make_optimizer(model.parameters())
    moved_somewhere = False
    for step in range(8):
        opt.zero_grad()
        model(torch.randn(6, 12)).pow(2).sum().backward()
        sp.before_optimizer_step(opt)
        before = {n: sp.masks.weight(n).detach().clone() for n in sp.masks}
        frozen = {n: ~sp.masks.grad_masks[n] for n in sp.masks}
        opt.step()
        sp.after_optimizer_step(opt)
        for n in sp.masks:
            after = sp.masks.weight(n).detach()
            assert torch.equal(after[frozen[n]], before[n][frozen[n]]), (step, n)
            moved_somewhere |= not torch.equal(after, before[n])
        sp.check()
    assert moved_somewhere  # the unmasked ones did train


# -- DDR ---------------------------------------------------------------------------------------------
def test_ddr_removes_30_percent_in_four_equal_steps():
    ddr = DataRemoval([5, 10, 15, 20], 0.3)
    assert [ddr.count_at(k, 10_000) for k in range(4)] == [750, 750, 750, 750]  # the release's 3000
    for size in (1, 7, 101, 9999):
        assert sum(ddr.count_at(k, size) for k in range(4)) == round(0.3 * size + 1e-9)


def test_forgetting_events_rank_the_removal():
    ddr = DataRemoval([2], 0.5, seed=0)
    index = torch.arange(8)
    assert torch.equal(ddr.indices(0, index, 0, n_examples=8), index)
    # presentations: 1 = correct. examples 0-3 learned and kept (0 events); 4, 5 forgotten once;
    # 6 forgotten twice; 7 never learned
    outcomes = [
        [1, 1, 1, 1, 1, 0, 1, 0],
        [1, 1, 1, 1, 0, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
    ]
    for row in outcomes:
        ddr.record(index, torch.tensor(row, dtype=torch.bool))
    assert ddr.scores(index).tolist() == [0, 0, 0, 0, 1, 1, 2, NEVER_LEARNED]
    kept = ddr.indices(0, index, 2, n_examples=8)
    assert sorted(kept.tolist()) == [4, 5, 6, 7]  # the four never-forgotten examples went first
    assert ddr.history[-1] == {"task": 0, "epoch": 2, "removed": 4, "remaining": 4, "removed_never_learned": 0}
    assert int(ddr.presented.sum()) == 0  # statistics reset after the removal


def test_ddr_ties_are_seeded_and_only_the_current_task_shrinks():
    def removed(seed: int) -> list[int]:
        ddr = DataRemoval([1], 0.3, seed=seed)
        task_index = torch.arange(100, 200)
        ddr.indices(3, task_index, 0, n_examples=300)
        ddr.record(task_index, torch.ones(100, dtype=torch.bool))  # all tied at 0 events
        kept = ddr.indices(3, task_index, 1, n_examples=300)
        assert len(kept) == 70 and set(kept.tolist()) <= set(task_index.tolist())
        assert torch.equal(ddr.indices(3, task_index, 1, n_examples=300), kept)  # idempotent per epoch
        gone = sorted(set(task_index.tolist()) - set(kept.tolist()))
        # the next task starts whole again
        nxt = torch.arange(200, 300)
        assert torch.equal(ddr.indices(4, nxt, 0, n_examples=300), nxt)
        return gone

    assert removed(0) == removed(0)
    assert removed(0) != removed(1)


def test_ddr_state_round_trip_continues_identically():
    index = torch.arange(50)
    g = torch.Generator().manual_seed(0)
    outcomes = [torch.rand(50, generator=g) > 0.4 for _ in range(6)]

    def run(split: bool):
        ddr = DataRemoval([2, 4], 0.4, seed=5)
        for epoch in range(6):
            if split and epoch == 3:
                state = ddr.state_dict()
                ddr = DataRemoval([2, 4], 0.4, seed=5)
                ddr.load_state_dict(state)
            kept = ddr.indices(0, index, epoch, n_examples=50)
            ddr.record(kept, outcomes[epoch][kept])
        return kept, ddr.history

    assert run(False)[0].tolist() == run(True)[0].tolist()
    assert run(False)[1] == run(True)[1]
    assert len(run(False)[0]) == 30


@pytest.mark.parametrize(
    "kwargs, key", [({"removal_epochs": [0, 5]}, "removal_epochs"), ({"remove_fraction": 1.0}, "remove_fraction")]
)
def test_bad_ddr_options_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=f"method.ddr.{key}"):
        DataRemoval(**{"removal_epochs": [5, 10, 15, 20], "remove_fraction": 0.3, **kwargs})


def test_freeze_bn_bias_keeps_every_batch_norm_bias_at_zero_as_the_release():
    from functools import partial

    from sparseforge.methods.sparcl import SparCL
    from sparseforge.models import create_model

    def bn_biases(model):
        return [m.bias for m in model.modules() if isinstance(m, nn.BatchNorm2d)]

    for freeze in (True, False):
        torch.manual_seed(0)
        model = create_model("small_cnn", 4, 3, 16)
        with torch.no_grad():
            for b in bn_biases(model):
                b.fill_(0.5)  # a trained-looking start: the option must zero them itself
        method = SparCL(model, partial(torch.optim.SGD, lr=0.5), freeze_bn_bias=freeze)
        optimizer = method.configure_optimizers()
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        for _ in range(3):
            loss = nn.functional.cross_entropy(model(torch.randn(8, 3, 16, 16)), torch.arange(8) % 4)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        biases = bn_biases(model)
        if freeze:
            assert all(torch.count_nonzero(b) == 0 and not b.requires_grad for b in biases)
            assert not any(id(b) in in_optimizer for b in biases)
        else:  # the paper: BN biases train
            assert all(b.requires_grad and id(b) in in_optimizer for b in biases)
            assert all(not torch.allclose(b, torch.full_like(b, 0.5)) for b in biases)
