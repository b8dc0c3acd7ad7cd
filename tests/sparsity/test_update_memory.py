"""What keeps a topology update's peak memory down, and that none of it changes a result.

- a compressed layer's dense gradient is scored in place and released before the optimizer step;
  a masked layer's ``.grad`` (the optimizer's) and gradients a caller hands in are never touched;
- the masked path drops its float mask copies across an update step (the rule's scores live then);
- the finiteness check and the initial masks need no weight-sized (or int64-sized) temporaries.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_backends_engine import BACKENDS, assert_same_training, batches, build, train

from sparseforge.sparsity.masks import MaskSet
from sparseforge.sparsity.placement import initial_masks
from sparseforge.sparsity.rules.rigl import RigL
from sparseforge.utils.allocator import release_free_heap
from sparseforge.utils.seeding import seeded_generator
from sparseforge.utils.tensors import CHUNK, all_finite


def backward(model, x, y, optimizer):
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_compressed_layers_are_scored_in_place_and_their_dense_gradient_is_gone_before_the_step(backend):
    model, optimizer, sp = build(backend)
    shared = {}
    original = RigL.grow_scores

    def grow_scores(self, sparsifier, name, position, dense_grad):
        scores = original(self, sparsifier, name, position, dense_grad)
        shared[name] = scores.untyped_storage().data_ptr() == dense_grad.untyped_storage().data_ptr()
        return scores

    sp.rule.grow_scores = grow_scores.__get__(sp.rule)
    data = batches(4)
    for x, y in data[:3]:
        backward(model, x, y, optimizer)
        sp.before_optimizer_step()
        optimizer.step()
        sp.after_optimizer_step()
    backward(model, *data[3], optimizer)  # the update step (delta_t=4)
    assert all(layer._dense_grad is not None for layer in sp.execution.layers.values())
    sp.before_optimizer_step()
    assert shared and all(shared[name] for name in sp.execution.layers)  # no second weight-sized tensor
    assert all(layer._dense_grad is None for layer in sp.execution.layers.values())  # released before the step
    optimizer.step()
    assert sp.after_optimizer_step() is not None
    masked = build("masked")
    train(*masked, data)
    assert_same_training(masked, (model, optimizer, sp))  # the same masks: scoring in place changed nothing


def test_the_masked_paths_gradient_is_only_masked_on_an_update_step():
    model, optimizer, sp = build("masked")
    data = batches(4)
    train(model, optimizer, sp, data[:3])
    backward(model, *data[3], optimizer)
    before = {name: sp.masks.weight(name).grad.clone() for name in sp.masks}
    assert any(bool((g < 0).any()) for g in before.values())
    sp.before_optimizer_step()
    for name, grad in before.items():
        assert torch.equal(sp.masks.weight(name).grad, torch.where(sp.masks[name], grad, 0.0)), name


@pytest.mark.parametrize("backend", ["masked", *BACKENDS])
def test_gradients_handed_to_update_now_are_left_as_they_were(backend):
    model, optimizer, sp = build(backend)
    g = torch.Generator().manual_seed(5)
    given_grads = {name: torch.randn(sp.masks[name].shape, generator=g) for name in sp.masks}
    copies = {name: t.clone() for name, t in given_grads.items()}
    assert sp.update_now(0.3, dense_grads=given_grads)["grown"] > 0
    for name, t in given_grads.items():
        assert torch.equal(t, copies[name]), name


def test_the_mask_copies_are_dropped_across_an_update_step_and_rebuilt_after_it():
    model, optimizer, sp = build("masked")
    data = batches(8)
    train(model, optimizer, sp, data[:3])
    held = sp.masks.factor_cache_bytes()
    assert held == sum(sp.masks.numel(n) * 4 for n in sp.masks)  # one fp32 copy per mask
    backward(model, *data[3], optimizer)
    sp.before_optimizer_step()
    assert sp.masks.factor_cache_bytes() == 0  # the rule's scores take their room for this step
    optimizer.step()
    assert sp.masks.factor_cache_bytes() == 0
    assert sp.after_optimizer_step() is not None
    assert sp.masks.factor_cache_bytes() == held  # rebuilt for the new masks
    train(model, optimizer, sp, data[4:7])  # ordinary steps use the copies again
    assert sp.masks.factor_cache_bytes() == held
    bare = build("masked", mask_cache=False)  # the same training as the bool-mask path
    train(*bare, data[:7])
    for name in sp.masks:
        assert torch.equal(sp.masks[name], bare[2].masks[name])
    for (key, a), b in zip(model.state_dict().items(), bare[0].state_dict().values(), strict=True):
        assert torch.equal(a, b), key


SPECIAL = st.sampled_from([0.0, -0.0, 1.0, -1.0, 3e38, -3e38, 1e-45, math.inf, -math.inf, math.nan])


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(0, 3 * CHUNK // 2 + 7),
    specials=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), SPECIAL), max_size=6),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
)
def test_all_finite_is_isfinite_all(size, specials, dtype):
    g = torch.Generator().manual_seed(size)
    t = torch.randn(size, generator=g).to(dtype)
    for where, value in specials:
        if size:
            t[int(where * size)] = value
    assert all_finite(t) == bool(torch.isfinite(t).all())


def test_all_finite_sees_large_finite_values_whose_sum_overflows():
    t = torch.full((8,), 3e38)
    assert not bool(torch.isfinite(t.sum())) and all_finite(t)
    t[5] = math.nan
    assert not all_finite(t)
    assert all_finite(torch.arange(10))  # integers are always finite


def test_initial_masks_are_those_of_an_int64_permutation():
    layers = {"a": torch.nn.Linear(700, 600), "b": torch.nn.Linear(64, 10)}
    nnz = {"a": 21_000, "b": 64}
    masks = initial_masks(layers, nnz, "random", seed=3)
    for position, (name, layer) in enumerate(layers.items()):
        chosen = torch.randperm(layer.weight.numel(), generator=seeded_generator(3, position))[: nnz[name]]
        expected = torch.zeros(layer.weight.numel(), dtype=torch.bool)
        expected[chosen] = True
        assert torch.equal(masks[name], expected.view(layer.weight.shape)), name


def test_freeing_the_heap_is_safe_to_call():
    assert release_free_heap() in (True, False)
    assert release_free_heap() == release_free_heap()


def test_a_compressed_backend_builds_no_float_mask_copies_while_setting_up(monkeypatch):
    built = []
    original = MaskSet.factor

    def factor(self, name, *args, **kwargs):
        built.append(name)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(MaskSet, "factor", factor)
    model, optimizer, sp = build("auto")
    assert built == [] and sp.execution.layers
    sp.check()  # pruned entries zero, counts exact
    build("masked")
    assert built  # the masked path keeps its copies from the start
