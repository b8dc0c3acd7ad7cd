"""Sparse backends under the engine: the same training as the masked path, step for step.

Same seed, same data: masked vs each backend, 20 optimizer steps with RigL updates (SGD with
momentum and weight decay, AdamW). Compressed layers keep only the active values and remap them
and the optimizer state at each update; the masks must come out identical and the weights equal
up to float summation order.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseforge.errors import ConfigError
from sparseforge.models import create_model
from sparseforge.sparsity import Sparsifier
from sparseforge.sparsity.backends import sparseprop as sparseprop_kernels
from sparseforge.sparsity.backends.layers import CompressedWeight
from sparseforge.sparsity.flops import forward_flops_per_module

MISSING = sparseprop_kernels.unavailable_reason()
BACKENDS = ["csr", pytest.param("sparseprop", marks=pytest.mark.skipif(bool(MISSING), reason=str(MISSING))), "auto"]
OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-3),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-4),
}


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("mlp", num_classes=10, in_chans=1, image_size=8, hidden_sizes=[96, 48])


def batches(n: int, seed: int = 1, batch: int = 16):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 1, 8, 8, generator=g), torch.randint(0, 10, (batch,), generator=g)) for _ in range(n)]


def build(backend: str, opt: str = "sgd_momentum_wd", rule: str = "rigl", seed: int = 0, **options):
    model = mlp(seed)
    optimizer = OPTIMIZERS[opt](model.parameters())
    sp = Sparsifier(
        model, optimizer, density=0.2, update_rule=rule, delta_t=4, total_steps=40, backend=backend, **options
    )
    return model, optimizer, sp


def train(model, optimizer, sp, data, clip: float | None = None, record: list | None = None):
    for x, y in data:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        sp.before_optimizer_step()
        if clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            if record is not None:
                record.append(float(norm))
        optimizer.step()
        sp.after_optimizer_step()


def assert_same_training(a, b, rel: float = 1e-5):
    (model_a, _, sp_a), (model_b, _, sp_b) = a, b
    for name in sp_a.masks:
        assert torch.equal(sp_a.masks[name], sp_b.masks[name]), name
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        scale = state_a[key].abs().max().clamp_min(1e-12)
        assert float((state_a[key] - state_b[key]).abs().max() / scale) <= rel, key


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_twenty_steps_with_rigl_match_the_masked_path(backend, opt):
    data = batches(20)
    masked, sparse = build("masked", opt), build(backend, opt)
    train(*masked, data)
    train(*sparse, data)
    assert sparse[2].updates_done == masked[2].updates_done == 5  # after steps 4, 8, ..., 20 (T_end 30)
    assert sparse[2].history == masked[2].history
    assert sparse[2].execution.layers  # really compressed
    assert_same_training(masked, sparse)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rigl_sees_the_same_dense_gradient_and_grows_the_same_set(backend):
    data = batches(4)
    runs = {"masked": build("masked"), backend: build(backend)}
    seen = {}
    for key, (model, optimizer, sp) in runs.items():
        original = sp.rule.prepare

        def prepare(sparsifier, fraction, grads, key=key, original=original):
            seen[key] = {n: g.clone() for n, g in grads.items()}
            return original(sparsifier, fraction, grads)

        sp.rule.prepare = prepare
        before = {n: sp.masks[n].clone() for n in sp.masks}
        train(model, optimizer, sp, data)
        seen[key + "/grown"] = {n: sp.masks[n] & ~before[n] for n in sp.masks}
    for name, grad in seen["masked"].items():
        torch.testing.assert_close(seen[backend][name], grad, rtol=1e-5, atol=1e-7)
        # well separated: the scores of the grown set are far from the largest one left behind
        assert torch.equal(seen[backend + "/grown"][name], seen["masked/grown"][name]), name
        assert int(seen["masked/grown"][name].sum()) > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_clipping_sees_the_same_gradient_norms(backend):
    data = batches(8)
    norms = {"masked": [], backend: []}
    for key in norms:
        train(*build(key), data, clip=0.5, record=norms[key])
    torch.testing.assert_close(torch.tensor(norms[backend]), torch.tensor(norms["masked"]), rtol=1e-5, atol=0)


@pytest.mark.parametrize("rule", ["momentum", "set", "static"])
def test_other_rules_match_the_masked_path_too(rule):
    data = batches(12)
    masked, sparse = build("masked", rule=rule), build("csr", rule=rule)
    train(*masked, data)
    train(*sparse, data)
    assert_same_training(masked, sparse)


def test_an_update_keeps_the_optimizer_state_of_kept_weights_and_zeroes_grown_ones():
    model, optimizer, sp = build("csr", "adamw")
    train(model, optimizer, sp, batches(3))  # 3 steps: Adam state everywhere active, no update yet
    layer = sp.execution.layers["features.1"]
    before_mask = sp.masks["features.1"].clone()
    before = {k: layer.plan.scatter(v) for k, v in optimizer.state[layer.values].items() if v.dim() == 1}
    train(model, optimizer, sp, batches(1, seed=9))  # step 4: a RigL update after the step
    assert sp.updates_done == 1
    after_mask = sp.masks["features.1"]
    kept, grown = before_mask & after_mask, after_mask & ~before_mask
    assert int(grown.sum()) > 0
    state = optimizer.state[layer.values]
    assert set(before) == {"exp_avg", "exp_avg_sq"}
    for key in before:
        assert state[key].shape == layer.values.shape
        dense = layer.plan.scatter(state[key])
        # kept weights carry their state (as after step 4), grown ones start at zero state
        assert torch.count_nonzero(dense[grown]) == 0
        assert torch.count_nonzero(dense[kept]) == int(kept.sum())
    assert torch.count_nonzero(layer.weight.detach()[grown]) == 0


def test_state_kept_across_the_update_is_the_masked_paths_state():
    masked, sparse = build("masked", "sgd_momentum_wd"), build("csr", "sgd_momentum_wd")
    data = batches(5)
    train(*masked, data)
    train(*sparse, data)
    for name, layer in sparse[2].execution.layers.items():
        weight = masked[0].get_submodule(name).weight
        momentum_masked = masked[1].state[weight]["momentum_buffer"]
        momentum_sparse = layer.plan.scatter(sparse[1].state[layer.values]["momentum_buffer"])
        mask = masked[2].masks[name]
        torch.testing.assert_close(momentum_sparse[mask], momentum_masked[mask], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("first,second", [("masked", "csr"), ("csr", "masked"), ("csr", "auto")])
def test_checkpoint_round_trip_between_backends(first, second):
    data = batches(12)
    straight = build("masked")
    train(*straight, data)
    a = build(first)
    train(*a, data[:6])
    saved = {"model": a[0].state_dict(), "optimizer": a[1].state_dict(), "sparsifier": a[2].state_dict()}
    assert all(t.dim() > 1 for k, t in saved["model"].items() if k.endswith("weight"))  # today's format
    names = [n for n, _ in a[0].named_parameters()]  # optimizer state is indexed in parameter order
    for index, state in saved["optimizer"]["state"].items():  # per-weight state in the dense layout
        if not names[index].endswith("bias"):
            assert state["momentum_buffer"].dim() == 2, names[index]
    b = build(second, seed=123)  # other initial weights and masks: everything must come from the files
    b[0].load_state_dict(saved["model"])  # the model first, then the masks: Lightning's order
    b[2].load_state_dict(saved["sparsifier"])
    b[1].load_state_dict(saved["optimizer"])
    train(*b, data[6:])
    assert_same_training(straight, b)


def test_after_set_masks_and_after_load_the_new_plan_is_used():
    model, optimizer, sp = build("csr", rule="static")
    layer = sp.execution.layers["features.1"]
    new = sp.masks["features.1"].flip(1)  # a different mask with the same count
    sp.apply_masks({"features.1": new}, optimizer)
    assert torch.equal(layer.plan.idx, new.flatten().nonzero().squeeze(1))
    x = torch.randn(5, 1, 8, 8)
    plain = mlp(0)
    plain.load_state_dict(model.state_dict())
    assert torch.count_nonzero(plain.features[1].weight.detach()[~new]) == 0
    torch.testing.assert_close(model(x), plain(x), rtol=1e-5, atol=1e-6)

    other_state = build("masked", rule="static", seed=7)
    reference_model, _, reference_sp = other_state
    model.load_state_dict(reference_model.state_dict())
    sp.load_state_dict(reference_sp.state_dict())
    assert torch.equal(layer.plan.idx, reference_sp.masks["features.1"].flatten().nonzero().squeeze(1))
    torch.testing.assert_close(model(x), reference_model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend,options", [("csr", {}), ("masked", {"mask_cache": False})])
def test_frozen_gradient_masks_hold_weights_still(backend, options):
    # compressed values, and the masked path through the bool masks (no float copies)
    model, optimizer, sp = build(backend, rule="static", **options)
    name = "features.1"
    active = sp.masks[name]
    frozen = active & (torch.rand(active.shape, generator=torch.Generator().manual_seed(3)) < 0.5)
    sp.masks.set_grad_masks({name: active & ~frozen})
    before = model.get_submodule(name).weight.detach().clone()
    train(model, optimizer, sp, batches(3))
    after = model.get_submodule(name).weight.detach()
    assert torch.equal(after[frozen], before[frozen])
    assert bool((after[active & ~frozen] != before[active & ~frozen]).any())
    assert torch.count_nonzero(after[~active]) == 0


def test_model_density_and_flops_count_the_dense_shapes():
    masked, sparse = build("masked"), build("csr")
    assert sparse[2].model_density() == pytest.approx(masked[2].model_density())
    x = torch.randn(4, 1, 8, 8)
    assert forward_flops_per_module(sparse[0], x[:1])[0] == forward_flops_per_module(masked[0], x[:1])[0]


def test_masked_path_caches_a_param_dtype_mask_and_counts_its_bytes():
    model, optimizer, sp = build("masked", rule="static")
    masks = sp.masks
    assert masks.factor_cache_bytes() == sum(4 * masks.numel(n) for n in masks)  # built by apply_ at start
    factor = masks.factor("features.1")
    assert factor.dtype == torch.float32 and torch.equal(factor.bool(), masks["features.1"])
    new = masks["features.1"].flip(0)
    sp.apply_masks({"features.1": new}, optimizer)
    assert torch.equal(masks.factor("features.1").bool(), new)  # rebuilt for the new mask
    assert torch.count_nonzero(model.get_submodule("features.1").weight.detach()[~new]) == 0


# -- bad inputs: one line each -------------------------------------------------------------------
def test_unknown_backend_is_one_config_error():
    with pytest.raises(
        ConfigError, match=r"sparsity\.backend: unknown value 'cuda_magic'.*masked, csr, sparseprop, auto"
    ):
        build("cuda_magic")


def test_sparseprop_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "sparseprop", None)  # the import now fails for real
    sparseprop_kernels.unavailable_reason.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"sparsity\.backend: backend=sparseprop: .*not installed.*pip install"):
            build("sparseprop")
        model, _, sp = build("auto")  # auto simply goes without it
        assert all(ex.name != "sparseprop" for c in sp.execution.candidates.values() for ex in c)
    finally:
        monkeypatch.undo()
        sparseprop_kernels.unavailable_reason.cache_clear()


def test_a_non_elementwise_optimizer_is_one_config_error():
    model = mlp()
    optimizer = torch.optim.LBFGS(model.parameters())
    with pytest.raises(ConfigError, match=r"sparsity\.backend: backend=csr .*element-wise optimizer; LBFGS is not one"):
        Sparsifier(model, optimizer, density=0.2, update_rule="static", backend="csr")


def test_cpu_only_kernels_refuse_weights_on_another_device():
    model, optimizer, sp = build("csr", rule="static")
    layer = sp.execution.layers["features.1"]
    layer._parameters["values"] = nn.Parameter(layer.values.detach().to("meta"))  # stands for a GPU
    with pytest.raises(ConfigError, match=r"backend=csr runs on the CPU only, but layer features.1 is on meta"):
        sp.execution.check_device()


def test_auto_keeps_unsupported_layers_masked_and_says_so(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 8, 3), nn.Flatten(), nn.Linear(8 * 6, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.INFO, logger="sparseforge"):
        sp = Sparsifier(model, optimizer, density=0.3, update_rule="static", backend="auto")
    assert "0" in sp.execution.kept_masked and "2" in sp.execution.layers
    assert isinstance(model[2], CompressedWeight) and not isinstance(model[0], CompressedWeight)
    assert any("layer 0 stays masked: Conv1d" in r.message for r in caplog.records)
    x, y = torch.randn(4, 2, 8), torch.randint(0, 10, (4,))
    with caplog.at_level(logging.INFO, logger="sparseforge"):
        train(model, optimizer, sp, [(x, y)])
    assert any("sparsity.backend=auto: 2 " in r.message for r in caplog.records)  # the logged choice
    assert torch.count_nonzero(model[0].weight.detach()[~sp.masks["0"]]) == 0  # still masked


def test_auto_times_again_when_a_layers_density_moves_by_more_than_ten_percent():
    model, optimizer, sp = build("auto", rule="static")
    train(model, optimizer, sp, batches(1))
    choices = sp.execution.chooser.choices
    assert choices["features.1"]["timings"] == 1
    mask = sp.masks["features.1"]
    slightly = mask.clone()
    slightly.view(-1)[(~mask).view(-1).nonzero()[:5].squeeze(1)] = True  # +5 weights: under 10%
    sp.apply_masks({"features.1": slightly}, optimizer, target_nnz={"features.1": int(slightly.sum())})
    train(model, optimizer, sp, batches(1, seed=2))
    assert choices["features.1"]["timings"] == 1
    more = slightly.clone()
    grow = int(0.2 * slightly.sum())
    more.view(-1)[(~slightly).view(-1).nonzero()[:grow].squeeze(1)] = True  # +20%: a TDM-sized change
    sp.apply_masks({"features.1": more}, optimizer, target_nnz={"features.1": int(more.sum())})
    train(model, optimizer, sp, batches(1, seed=3))
    assert choices["features.1"]["timings"] == 2
    assert choices["features.1"]["density"] == pytest.approx(float(more.float().mean()))
    assert sp.execution.layers["features.1"].values.numel() == int(more.sum())  # the count changed too


@pytest.mark.parametrize("opt", ["sgd_momentum_wd", "adamw"])
def test_masked_path_without_a_mask_cache_trains_the_same_and_holds_no_copy(opt):
    # mask_cache=false zeroes through the bool masks (torch.where) instead of float copies: the
    # same weights, masks and RigL choices (x * 0.0 may be -0.0 where where() writes +0.0: equal)
    cached, bare = build("masked", opt=opt), build("masked", opt=opt, mask_cache=False)
    for arm in (cached, bare):
        train(*arm, batches(12))  # three RigL updates (delta_t=4)
    assert cached[2].updates_done == bare[2].updates_done == 3
    for name in cached[2].masks:
        assert torch.equal(cached[2].masks[name], bare[2].masks[name])
    for (key, a), b in zip(cached[0].state_dict().items(), bare[0].state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    assert cached[2].masks.factor_cache_bytes() > 0
    assert bare[2].masks.factor_cache_bytes() == 0 and not bare[2].masks._factors
