"""The N:M mask is computed once per weight version: evaluation and accumulation reuse it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseforge.sparsity.nm import NMSchedule, NMSparsifier, nm_mask
from sparseforge.sparsity.nm.sparsifier import dense_weight, nm_parametrization


def test_mask_is_recomputed_after_an_optimizer_step_and_reused_until_then(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    sp = NMSparsifier(model, NMSchedule(n=1, m=8, mode="srste"), include=["0"])
    sp.set_position(1, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    calls = []
    import sparseforge.sparsity.nm.weight as weight_module

    original = weight_module.nm_mask_and_factor
    monkeypatch.setattr(
        weight_module, "nm_mask_and_factor", lambda w, n, m, dim=1: calls.append(1) or original(w, n, m, dim)
    )
    x = torch.randn(6, 16)
    for _ in range(3):  # gradient accumulation: three micro-batches, one mask
        model(x).sum().backward()
    assert len(calls) == 1
    optimizer.step()
    model.eval()
    with torch.no_grad():
        outputs = [model(x) for _ in range(4)]  # an evaluation loop after the step: one new mask
    assert len(calls) == 2
    layer = model[0]
    expected = nm_mask(dense_weight(layer), 1, 8)
    assert torch.equal(layer.weight != 0, expected)  # the cached mask is the current weight's
    with torch.no_grad():
        dense_weight(layer).mul_(-1).add_(torch.randn_like(dense_weight(layer)))  # any in-place change
    model(x)
    assert len(calls) == 3 and torch.equal(layer.weight != 0, nm_mask(dense_weight(layer), 1, 8))
    assert all(torch.equal(o, outputs[0]) for o in outputs)
    assert nm_parametrization(layer).mask_recomputations_key()[0] == dense_weight(layer)._version


def _reference_srste_step(weights, bias, x, y, masks_of, lam):
    """One SR-STE forward/backward by hand: w~ = w * mask(w), dL/dw = (dL/dw~ + lam * w) - lam * w~
    (in this order of float operations), the rule the parametrization implements."""
    h = x
    effective = []
    for i, w in enumerate(weights):
        mask = masks_of(w)  # None: a dense layer
        w_eff = w if mask is None else (w.detach() * mask.to(w.dtype)).requires_grad_()
        effective.append(None if mask is None else w_eff)
        h = F.linear(h, w_eff, bias[i])
        if i + 1 < len(weights):
            h = F.relu(h)
    F.cross_entropy(h, y).backward()
    for w, w_eff in zip(weights, effective, strict=True):
        if w_eff is not None:
            w.grad = torch.add(w_eff.grad, w.detach(), alpha=lam).sub_(w_eff.detach(), alpha=lam)


@pytest.mark.parametrize("n,m", [(1, 8), (2, 4), (3, 8)])
def test_srste_training_is_bit_identical_to_the_rule_by_hand(n, m):
    # masks from the stable-sort definition (no fast path), the SR-STE term in the same float
    # order: the fast N:M path must not change a single bit of the trajectory
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
    weights = [nn.Parameter(model[i].weight.detach().clone()) for i in (0, 2, 4)]
    biases = [nn.Parameter(model[i].bias.detach().clone()) for i in (0, 2, 4)]
    sp = NMSparsifier(model, NMSchedule(n=n, m=m, mode="srste"), include=["0", "2"])
    sp.set_position(1, 2)
    lam = sp.schedule.srste_lambda

    def masks_of(w):
        if w.shape[1] == 16:  # the dense head
            return None
        groups = w.detach().abs().reshape(-1, m)
        order = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
        return torch.zeros(groups.shape, dtype=torch.bool).scatter_(1, order, True).reshape(w.shape)

    ours = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    theirs = torch.optim.AdamW(
        [p for pair in zip(weights, biases, strict=True) for p in pair], lr=1e-2, weight_decay=0.05
    )
    g = torch.Generator().manual_seed(1)
    for _ in range(6):
        x, y = torch.randn(8, 32, generator=g), torch.randint(0, 4, (8,), generator=g)
        ours.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        ours.step()
        theirs.zero_grad(set_to_none=True)
        _reference_srste_step(weights, biases, x, y, masks_of, lam)
        theirs.step()
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            assert torch.equal(dense_weight(model[2 * i]), w.detach())
            assert torch.equal(model[2 * i].bias.detach(), b.detach())
        for i in (0, 2):
            assert torch.equal(model[i].weight, weights[i // 2].detach() * masks_of(weights[i // 2]))


def test_the_bool_mask_is_made_only_when_asked_for_and_matches_the_forward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8))
    sp = NMSparsifier(model, NMSchedule(n=1, m=8, mode="srste"), include=["0"])
    sp.set_position(1, 2)
    model(torch.randn(2, 16)).sum().backward()
    param = nm_parametrization(model[0])
    assert param._mask_cache[1] is None  # the training forward multiplies by the float copy only
    keep, factor = param.mask(dense_weight(model[0]), 1, 8)
    assert keep.dtype == torch.bool and torch.equal(keep, nm_mask(dense_weight(model[0]), 1, 8))
    assert torch.equal(factor, keep.float()) and param._mask_cache[1] is keep
