"""Masks under real optimizers: pruned weights stay exactly zero, new weights start from zero."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.models import create_model
from sparseforge.sparsity import MaskInvariantError, Sparsifier
from tests.helpers.engine import train_on_noise

OPTIMIZERS = {
    "sgd_nesterov_wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-3),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-4),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05),
}


def small_cnn(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("small_cnn", num_classes=10, in_chans=3, image_size=16, channels=[8, 16, 16])


def train_steps(model, optimizer, sparsifier, n: int, seed: int = 1, batch: int = 16) -> list[dict]:
    return train_on_noise(model, optimizer, sparsifier, n, (3, 16, 16), batch=batch, seed=seed)


def assert_pruned_exactly_zero(sparsifier):
    for name in sparsifier.masks:
        weight = sparsifier.masks.weight(name).detach()
        assert torch.count_nonzero(weight[~sparsifier.masks[name]]) == 0, name


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("rule", ["static", "set", "rigl"])
def test_pruned_weights_stay_exactly_zero_and_counts_never_change(opt_name, rule):
    model = small_cnn()
    optimizer = OPTIMIZERS[opt_name](model.parameters())
    sp = Sparsifier(model, optimizer, density=0.2, update_rule=rule, delta_t=4, total_steps=30, seed=5)
    counts = sp.masks.nnz_per_layer()
    start = {n: sp.masks.weight(n).detach().clone() for n in sp.masks}
    updates = train_steps(model, optimizer, sp, 30)
    assert sp.masks.nnz_per_layer() == counts
    assert_pruned_exactly_zero(sp)
    sp.check()
    moved = sum(int((sp.masks.weight(n).detach() != start[n])[sp.masks[n]].sum()) for n in sp.masks)
    assert moved > 0  # training really happened
    if rule == "static":
        assert not updates and sp.masks.itop() == pytest.approx(sp.global_density())
    else:
        assert len(updates) == 5  # steps 4, 8, ..., 20 (< 0.75 * 30)
        assert all(u["grown"] == u["dropped"] > 0 for u in updates)
        assert sp.masks.itop() > sp.global_density()


def test_without_the_masking_calls_adam_would_move_pruned_weights():
    # The control for the test above: the same run without before/after_optimizer_step.
    model = small_cnn()
    optimizer = OPTIMIZERS["adamw"](model.parameters())
    sp = Sparsifier(model, optimizer, density=0.2, update_rule="static")
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(torch.randn(8, 3, 16, 16)), torch.randint(0, 10, (8,))).backward()
        optimizer.step()
    with pytest.raises(MaskInvariantError, match="pruned weights are not zero"):
        sp.check()


@pytest.mark.parametrize("opt_name", ["sgd_nesterov_wd", "adam", "adamw"])
@pytest.mark.parametrize("rule", ["set", "rigl", "unfired", "momentum"])
def test_regrown_weights_start_at_zero_with_zeroed_optimizer_state(opt_name, rule):
    model = small_cnn()
    optimizer = OPTIMIZERS[opt_name](model.parameters())
    sp = Sparsifier(model, optimizer, density=0.3, update_rule=rule, delta_t=1000, total_steps=10_000)
    train_steps(model, optimizer, sp, 3)
    # Make every optimizer state entry non-zero, so a missing reset cannot hide.
    for p in model.parameters():
        for value in optimizer.state[p].values():
            if torch.is_tensor(value) and value.shape == p.shape:
                value.fill_(0.25)
    old = {n: sp.masks[n].clone() for n in sp.masks}
    before = {n: sp.masks.weight(n).detach().clone() for n in sp.masks}
    grads = {n: torch.randn_like(sp.masks.weight(n)) for n in sp.masks}
    stats = sp.update_now(drop_fraction=0.3, dense_grads=grads)
    assert stats["grown"] == stats["dropped"] > 0
    for name in sp.masks:
        new, weight = sp.masks[name], sp.masks.weight(name).detach()
        grown, dropped, kept = new & ~old[name], old[name] & ~new, new & old[name]
        assert int(new.sum()) == int(old[name].sum())
        assert torch.count_nonzero(weight[grown]) == 0 and torch.count_nonzero(weight[dropped]) == 0
        assert torch.equal(weight[kept], before[name][kept])
        state = [v for v in optimizer.state[sp.masks.weight(name)].values() if torch.is_tensor(v) and v.dim() > 0]
        assert state, "the optimizer keeps per-weight state"
        for value in state:
            assert torch.count_nonzero(value[grown]) == 0
            assert torch.all(value[kept] == 0.25)


def test_rigl_without_regrow_dropped_grows_among_weights_inactive_before_the_update():
    model = small_cnn()
    sp = Sparsifier(model, None, density=0.2, update_rule="rigl", total_steps=100, regrow_dropped=False)
    old = {n: sp.masks[n].clone() for n in sp.masks}
    g = torch.Generator().manual_seed(0)
    grads = {n: torch.rand(sp.masks.weight(n).shape, generator=g) for n in sp.masks}
    for n in sp.masks:  # active weights get the largest gradients: only the exclusion stops their regrowth
        grads[n][old[n]] += 10.0
    sp.update_now(drop_fraction=0.5, dense_grads=grads)
    for n in sp.masks:
        grown = sp.masks[n] & ~old[n]
        k = int(grown.sum())
        expected = torch.topk(grads[n].masked_fill(old[n], -1).flatten(), k).indices
        assert set(expected.tolist()) == set(grown.flatten().nonzero().flatten().tolist()), n
        assert not (grown & old[n]).any()


@pytest.mark.parametrize("rule", ["rigl", "set", "momentum"])
def test_rigl_set_and_snfs_default_to_growing_among_all_weights_inactive_after_the_drop(rule):
    sp = Sparsifier(small_cnn(), None, density=0.2, update_rule=rule, total_steps=100)
    assert sp.options.rule.regrow_dropped  # RigL's Algorithm 1 and code
    unfired = Sparsifier(small_cnn(), None, density=0.2, update_rule="unfired", total_steps=100)
    assert not unfired.options.rule.regrow_dropped


def test_rigl_by_default_regrows_a_just_dropped_weight_which_keeps_its_value_and_optimizer_state():
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sp = Sparsifier(model, optimizer, density=0.2, update_rule="rigl", total_steps=100)  # default candidates
    train_steps(model, optimizer, sp, 2)
    for p in model.parameters():  # every momentum entry non-zero, so a reset cannot hide
        optimizer.state[p]["momentum_buffer"].fill_(0.25)
    name = "features.4"
    mask, weight = sp.masks[name].clone(), sp.masks.weight(name).detach().clone()
    active = mask.flatten().nonzero().flatten()
    n = len(active) // 2  # drop fraction 0.5: the n smallest |w| among the active weights go
    dropped = active[weight.flatten()[active].abs().argsort()[:n]]
    regrown = dropped[: n // 2]  # half of them have the largest gradients, so RigL grows them back
    inactive = (~mask).flatten().nonzero().flatten()
    new = inactive[: n - len(regrown)]  # the rest of the growth goes to weights inactive before
    grad = torch.zeros(mask.numel())
    grad[regrown], grad[new] = 10.0 + torch.rand(len(regrown)), 5.0 + torch.rand(len(new))
    grads = {k: torch.zeros_like(sp.masks.weight(k)) for k in sp.masks} | {name: grad.view(mask.shape)}
    stats = sp.update_now(drop_fraction=0.5, dense_grads=grads, optimizer=optimizer)
    after, w = sp.masks[name].flatten(), sp.masks.weight(name).detach().flatten()
    momentum = optimizer.state[sp.masks.weight(name)]["momentum_buffer"].flatten()
    assert after[regrown].all() and after[new].all() and not after[dropped[n // 2 :]].any()
    # dropped and regrown in the same update: still active, same value, same optimizer state
    assert torch.equal(w[regrown], weight.flatten()[regrown]) and bool((w[regrown] != 0).all())
    assert bool((momentum[regrown] == 0.25).all())
    # weights inactive before: start at 0 with zeroed state
    assert bool((w[new] == 0).all()) and bool((momentum[new] == 0).all())
    assert stats["layers"][name] == {"grown": len(new), "dropped": n - len(regrown)}


def test_regrow_dropped_lets_an_update_regrow_what_it_just_dropped():
    model = small_cnn()
    sp = Sparsifier(model, None, density=0.2, update_rule="rigl", total_steps=100, regrow_dropped=True)
    old = {n: sp.masks[n].clone() for n in sp.masks}
    grads = {n: old[n].float() * 10 + torch.rand(old[n].shape) for n in sp.masks}
    stats = sp.update_now(drop_fraction=0.5, dense_grads=grads)
    # Every dropped weight had a larger gradient than any inactive one: all regrown, nothing new.
    assert stats["grown"] == 0 and stats["dropped"] == 0
    assert all(torch.equal(sp.masks[n], old[n]) for n in sp.masks)


def test_set_growth_is_seeded_and_unfired_grows_only_never_active_weights():
    masks = []
    for seed in (1, 1, 2):
        sp = Sparsifier(small_cnn(), None, density=0.2, update_rule="set", total_steps=100, seed=seed)
        sp.update_now(drop_fraction=0.3)
        masks.append({n: sp.masks[n].clone() for n in sp.masks})
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])
    assert not all(torch.equal(masks[0][n], masks[2][n]) for n in masks[0])

    sp = Sparsifier(small_cnn(), None, density=0.2, update_rule="unfired", total_steps=100)
    for _ in range(3):
        fired_before = {n: sp.masks.fired[n].clone() for n in sp.masks}
        old = {n: sp.masks[n].clone() for n in sp.masks}
        sp.update_now(drop_fraction=0.3)
        for n in sp.masks:
            if old[n].all():  # ERK capped this layer dense: nothing to move
                continue
            grown = sp.masks[n] & ~old[n]
            never_fired = ~fired_before[n]
            assert grown.any(), n
            if int(grown.sum()) <= int(never_fired.sum()):
                assert not (grown & fired_before[n]).any(), n
            else:  # the never-active ones ran out: all of them grown, the rest at random
                assert not (never_fired & ~grown).any(), n


def test_momentum_growth_uses_an_ema_of_the_dense_gradient():
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sp = Sparsifier(
        model, optimizer, density=0.2, update_rule="momentum", delta_t=1000, total_steps=10_000, momentum_decay=0.5
    )
    ema = {n: torch.zeros_like(sp.masks.weight(n)) for n in sp.masks}
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(
            model(torch.randn(8, 3, 16, 16, generator=g)), torch.randint(0, 10, (8,), generator=g)
        ).backward()
        for n in sp.masks:
            ema[n] = 0.5 * ema[n] + 0.5 * sp.masks.weight(n).grad  # dense: read before masking
        sp.before_optimizer_step()
        optimizer.step()
        sp.after_optimizer_step()
    for n in sp.masks:
        assert torch.allclose(sp.rule.ema[n], ema[n])
    old = {n: sp.masks[n].clone() for n in sp.masks}
    sp.update_now(drop_fraction=0.3)
    for n in sp.masks:
        if old[n].all():  # ERK capped this layer dense
            continue
        grown = sp.masks[n] & ~old[n]
        threshold = ema[n].abs()[grown].min()
        assert (ema[n].abs()[~old[n] & ~grown] <= threshold).all(), n


def test_gradient_masks_freeze_active_weights_even_with_momentum_and_weight_decay():
    model = small_cnn()
    optimizer = OPTIMIZERS["sgd_momentum_wd"](model.parameters())
    sp = Sparsifier(model, optimizer, density=0.5, update_rule="static")
    train_steps(model, optimizer, sp, 2)  # momentum buffers are non-zero from here on
    g = torch.Generator().manual_seed(3)
    grad_masks = {n: torch.rand(sp.masks[n].shape, generator=g) < 0.5 for n in sp.masks}
    sp.masks.set_grad_masks(grad_masks)
    before = {n: sp.masks.weight(n).detach().clone() for n in sp.masks}
    train_steps(model, optimizer, sp, 3, seed=4)
    for n in sp.masks:
        weight = sp.masks.weight(n).detach()
        frozen = sp.masks[n] & ~grad_masks[n]
        free = sp.masks[n] & grad_masks[n]
        assert torch.equal(weight[frozen], before[n][frozen]), n
        assert (weight[free] != before[n][free]).any(), n
    assert_pruned_exactly_zero(sp)


def test_check_names_the_layer_with_a_wrong_count_or_a_stray_weight():
    sp = Sparsifier(small_cnn(), None, density=0.2, update_rule="static")
    with torch.no_grad():
        w = sp.masks.weight("features.4")
        w[~sp.masks["features.4"]] = 1.0
    with pytest.raises(MaskInvariantError, match="'features.4'.*not zero"):
        sp.check()
    sp.masks.apply_()
    sp.masks.masks["fc"][0, 0] = ~sp.masks.masks["fc"][0, 0]
    with pytest.raises(MaskInvariantError, match="'fc'.*expected exactly"):
        sp.check()


def test_state_dict_round_trip_through_a_weights_only_load(tmp_path):
    model = small_cnn()
    optimizer = OPTIMIZERS["adam"](model.parameters())
    sp = Sparsifier(model, optimizer, density=0.2, update_rule="momentum", delta_t=3, total_steps=30)
    train_steps(model, optimizer, sp, 10)
    torch.save(sp.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    other = Sparsifier(small_cnn(), None, density=0.2, update_rule="momentum", delta_t=3)
    other.load_state_dict(state)
    assert other.step == 10 and other.updates_done == sp.updates_done == 3 and other.horizon == 30
    for n in sp.masks:
        assert torch.equal(other.masks[n], sp.masks[n]) and torch.equal(other.masks.fired[n], sp.masks.fired[n])
        assert torch.equal(other.rule.ema[n], sp.rule.ema[n])
    assert other.flops.train_total == sp.flops.train_total > 0
    other.check()
    wrong = Sparsifier(small_cnn(), None, density=0.2, update_rule="momentum", exclude=["fc"])
    with pytest.raises(ValueError, match="missing .*unexpected .*'fc'"):
        wrong.load_state_dict(state)


@pytest.mark.slow  # a subprocess that trains: about 15 s
def test_the_engine_drives_a_hand_written_loop_without_lightning(tmp_path):
    script = """
import sys, torch, torch.nn.functional as F
from sparseforge.sparsity import Sparsifier
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
sparsifier = Sparsifier(model, optimizer, density=0.1, update_rule="rigl", delta_t=5, total_steps=40)
for step in range(40):
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    sparsifier.before_optimizer_step()
    optimizer.step()
    sparsifier.after_optimizer_step()
sparsifier.check()
assert sparsifier.updates_done == 5, sparsifier.updates_done
assert "lightning" not in sys.modules and "pytorch_lightning" not in sys.modules
print("ok", sparsifier.global_density(), sparsifier.flops.train_relative_to_dense)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    _, density, relative = result.stdout.split()
    assert float(density) == pytest.approx(0.1, abs=1 / (64 * 128 + 128 * 10))
    assert 0.1 < float(relative) < 0.2  # sparse steps plus five dense-gradient update steps


@pytest.mark.parametrize(
    ("numel", "n"),
    [(1_000_000, 1_000), (2_359_296, 70_000), (600_000, 149_999), (300_000, 7), (3_000_000, 900_000), (2_000_000, 1)],
)
@pytest.mark.parametrize("largest", [True, False])
def test_top_n_of_large_tensors_follows_the_plain_rule(numel, n, largest):
    from sparseforge.sparsity.placement import top_n_indices

    scores = torch.rand(numel, generator=torch.Generator().manual_seed(numel))  # a few ties (24-bit values)
    got = top_n_indices(scores, n, largest)
    assert got.numel() == n
    assert torch.equal(torch.sort(got).values, torch.sort(_lowest_index_top_n(scores, n, largest)).values)


@pytest.mark.parametrize("largest", [True, False])
def test_threshold_preselection_is_exact_even_when_its_sample_misleads(largest):
    from sparseforge.sparsity.placement import top_n_indices

    # every sampled position (stride numel / 2**16) holds a score that would set the threshold wrong
    numel, n = 1 << 21, 600_000
    scores = torch.rand(numel, generator=torch.Generator().manual_seed(3))
    scores[:: numel >> 16] = 2.0 if largest else -1.0
    got = top_n_indices(scores, n, largest)
    assert torch.equal(torch.sort(got).values, torch.sort(_lowest_index_top_n(scores, n, largest)).values)


def _lowest_index_top_n(flat: torch.Tensor, n: int, largest: bool) -> torch.Tensor:
    """The rule written plainly: a stable sort by score, ties in index order, the first n."""
    return torch.sort(flat, descending=largest, stable=True).indices[:n]


SCORE_KINDS = st.sampled_from(["distinct", "few_values", "mostly_zero", "with_infinities"])


@settings(max_examples=150, deadline=None)
@given(
    numel=st.integers(1, 6000),
    fraction=st.floats(0, 1),
    kind=SCORE_KINDS,
    largest=st.booleans(),
    preselect=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_top_n_takes_the_lowest_indices_among_ties_on_every_route(numel, fraction, kind, largest, preselect, seed):
    # Zero grow scores (dead units) and infinite fills (excluded positions) are common: which of
    # the tied scores win must be a rule, not whatever a topk implementation does.
    from sparseforge.sparsity import placement

    g = torch.Generator().manual_seed(seed)
    if kind == "distinct":
        scores = torch.rand(numel, generator=g)
    elif kind == "few_values":
        scores = torch.randint(0, 5, (numel,), generator=g).float()
    elif kind == "mostly_zero":
        scores = torch.rand(numel, generator=g) * (torch.rand(numel, generator=g) < 0.3)
    else:
        scores = torch.rand(numel, generator=g).masked_fill_(torch.rand(numel, generator=g) < 0.5, -math.inf)
    n = round(fraction * numel)
    expected = torch.sort(_lowest_index_top_n(scores, n, largest)).values
    limits = {"PRESELECT_ABOVE": 16, "SAMPLE": 8} if preselect else {}  # small tensors take the pre-selection too
    with pytest.MonkeyPatch.context() as patch:
        for key, value in limits.items():
            patch.setattr(placement, key, value)
        got = placement.top_n_indices(scores, n, largest)
    assert got.numel() == n
    assert torch.equal(torch.sort(got).values, expected)


@pytest.mark.parametrize("numel", [100, 1 << 19])
def test_top_n_refuses_nan_scores_instead_of_returning_fewer(numel):
    from sparseforge.sparsity.placement import top_n_indices

    scores = torch.rand(numel, generator=torch.Generator().manual_seed(1))
    scores[numel // 3] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        top_n_indices(scores, numel // 2)
    with pytest.raises(ValueError, match="cannot pick"):
        top_n_indices(scores, numel + 1)


def test_top_n_of_a_large_layer_needs_little_more_than_its_scores():
    # A RigL update of a 4096x4096 layer: one topk over all its scores would need 12 bytes per
    # score on top of them. Peak resident memory of a fresh process, selection alone.
    script = """
import torch
from pathlib import Path
from sparseforge.sparsity.placement import top_n_indices
torch.set_num_threads(1)
scores = torch.rand(4096 * 4096, generator=torch.Generator().manual_seed(0))
def kib(field):
    return next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))
picked = []
for n in (1, 20_000, 131_000, 400_000):
    Path("/proc/self/clear_refs").write_text("5")
    base = kib("VmRSS")
    picked.append(top_n_indices(scores, n).numel())
    print(kib("VmHWM") - base)
assert picked == [1, 20_000, 131_000, 400_000], picked
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    growth_kib = [int(line) for line in result.stdout.split()]
    scores_kib = 4096 * 4096 * 4 // 1024
    assert max(growth_kib) < scores_kib / 2, growth_kib
