"""TaskMaskStore: merging keeps every earlier task's weights, capacity adds up, a task's view
puts exactly its weights in the model and the working state back, and its state round-trips."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.sparsity.task_masks import TaskMaskStore, dense_state, pack_bits, unpack_bits


def model_and_layers(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    return model, {"0": model[0], "3": model[3]}


def random_masks(layers, density: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(m.weight.shape, generator=g) < density for n, m in layers.items()}


def test_merge_keeps_earlier_values_outside_the_new_mask_and_overlapping_masks_share_weights():
    model, layers = model_and_layers()
    store = TaskMaskStore()
    m0, m1 = random_masks(layers, 0.5, 1), random_masks(layers, 0.5, 2)
    assert any((m0[n] & m1[n]).any() for n in layers)  # the masks overlap
    w0 = {n: torch.randn_like(m.weight) * m0[n] for n, m in layers.items()}
    store.add(0, m0, w0)
    # task 1 trains from the merged weights; the weights it shares with task 0 are frozen, so they
    # still hold task 0's values when it ends
    w1 = {n: torch.where(m0[n], w0[n], torch.randn_like(w0[n])) * m1[n] for n in layers}
    store.add(1, m1, w1)
    for n in layers:
        shared = m0[n] & m1[n]
        assert torch.equal(store.merged[n][m1[n]], w1[n][m1[n]])
        assert torch.equal(store.merged[n][m0[n] & ~m1[n]], w0[n][m0[n] & ~m1[n]])
        assert torch.equal(store.merged[n][shared], w0[n][shared])  # reused weights kept their values
        assert torch.count_nonzero(store.merged[n][~(m0[n] | m1[n])]) == 0
        assert torch.equal(store.used[n], m0[n] | m1[n])


def test_capacity_adds_up():
    _, layers = model_and_layers()
    store = TaskMaskStore()
    total = sum(m.weight.numel() for m in layers.values())
    masks = [random_masks(layers, 0.4, s) for s in range(3)]
    fired = [{n: m[n] | random_masks(layers, 0.2, 10 + s)[n] for n in m} for s, m in enumerate(masks)]
    for t, (m, f) in enumerate(zip(masks, fired, strict=True)):
        entry = store.add(t, m, {n: layer.weight for n, layer in layers.items()}, fired=f)
        size = sum(int(x.count_nonzero()) for x in m.values())
        assert entry["owned"] + entry["reused"] == pytest.approx(entry["density"]) == pytest.approx(size / total)
        assert entry["used_after"] + entry["free_after"] == pytest.approx(1.0)
        assert 0 <= entry["released"] <= entry["free_after"] + 1e-12  # released weights stay free
    assert sum(e["owned"] for e in store.capacity) == pytest.approx(store.used_share())
    assert store.capacity[0]["reused"] == 0.0


def test_a_task_view_puts_its_weights_and_dense_state_in_and_restores_the_working_model():
    model, layers = model_and_layers()
    model.train()
    model(torch.randn(8, 6))  # BN running statistics move
    store = TaskMaskStore()
    sparse = {n: m.weight for n, m in layers.items()}
    m0 = random_masks(layers, 0.5, 1)
    store.add(0, m0, {n: w.detach() * m0[n] for n, w in sparse.items()}, dense_state(model, sparse))
    task0 = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # a later task trains: everything changes
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.add_(3.0)
    working = {k: v.clone() for k, v in model.state_dict().items()}
    with store.use_task(model, layers, 0):
        now = model.state_dict()
        for n in layers:
            assert torch.equal(now[f"{n}.weight"], task0[f"{n}.weight"] * m0[n])
        for key in ("0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "3.bias"):
            assert torch.equal(now[key], task0[key]), key
    assert all(torch.equal(v, working[k]) for k, v in model.state_dict().items())


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), seed=st.integers(0, 1000))
def test_packed_masks_round_trip(shape, seed):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.3
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack_bits(packed, mask.shape), mask)


def test_state_round_trips():
    model, layers = model_and_layers()
    store = TaskMaskStore()
    sparse = {n: m.weight for n, m in layers.items()}
    for t in range(2):
        m = random_masks(layers, 0.5, t)
        store.add(t, m, {n: w.detach() * m[n] for n, w in sparse.items()}, dense_state(model, sparse), fired=m)
    copy = TaskMaskStore()
    copy.load_state_dict(store.state_dict())
    assert copy.task_ids == store.task_ids and copy.capacity == store.capacity
    for n in layers:
        assert torch.equal(copy.used[n], store.used[n]) and torch.equal(copy.merged[n], store.merged[n])
        assert all(torch.equal(copy.masks[t][n], store.masks[t][n]) for t in range(2))
    assert all(torch.equal(copy.dense[1][k], store.dense[1][k]) for k in store.dense[1])
    with pytest.raises(ValueError, match="already stored"):
        store.add(1, m, sparse)
