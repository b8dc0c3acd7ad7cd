"""The N:M mask is computed once per weight version: evaluation and accumulation reuse it."""

from __future__ import annotations

import torch
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

    original = weight_module.nm_mask
    monkeypatch.setattr(weight_module, "nm_mask", lambda w, n, m, dim=1: calls.append(1) or original(w, n, m, dim))
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
