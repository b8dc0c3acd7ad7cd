"""Sparse kernels against F.linear / F.conv2d on the masked weight, per executor (fp32, CPU).

Each executor runs on a compressed layer built from a mask (never from the weight values):
forward, input gradient and the gradient of the active weights must match the masked dense
layer; the dense weight gradient (for update rules) is exactly zero nowhere it should not be.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.sparsity.backends.csr import CSRExecutor
from sparseforge.sparsity.backends.dense import DenseExecutor
from sparseforge.sparsity.backends.layers import compress, decompress
from sparseforge.sparsity.backends.plan import Plan
from sparseforge.sparsity.backends.sparseprop import SparsePropExecutor, unavailable_reason

SPARSEPROP_MISSING = unavailable_reason()
EXECUTORS = {
    "dense": DenseExecutor,
    "csr": CSRExecutor,
    "sparseprop": pytest.param(
        SparsePropExecutor, marks=pytest.mark.skipif(bool(SPARSEPROP_MISSING), reason=str(SPARSEPROP_MISSING))
    ),
}
OUT, IN = 24, 40


def masks_to_cover() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    random = torch.rand(OUT, IN, generator=g) < 0.15
    empty_row = random.clone()
    empty_row[3] = False
    empty_col = random.clone()
    empty_col[:, 7] = False
    one = torch.zeros(OUT, IN, dtype=torch.bool)
    one[5, 11] = True
    return {
        "random": random,
        "empty_row": empty_row,
        "empty_col": empty_col,
        "one_nonzero": one,
        "dense": torch.ones(OUT, IN, dtype=torch.bool),
    }


def reference_and_compressed(mask: torch.Tensor, executor, bias: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    ref = nn.Linear(IN, OUT, bias=bias)
    with torch.no_grad():
        ref.weight.mul_(mask)
    layer = nn.Linear(IN, OUT, bias=bias)
    layer.load_state_dict(ref.state_dict())
    compress(layer, "layer", mask, executor)
    return ref, layer


def tolerance(fan_in: int) -> dict:
    return {"rtol": 1e-5, "atol": 1e-6 * math.sqrt(fan_in)}


@pytest.mark.parametrize("executor", list(EXECUTORS.values()), ids=list(EXECUTORS))
@pytest.mark.parametrize("mask_name", list(masks_to_cover()))
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_linear_forward_and_gradients_match_the_masked_dense_layer(executor, mask_name, batch):
    mask = masks_to_cover()[mask_name]
    ref, layer = reference_and_compressed(mask, executor())
    x = torch.randn(batch, IN)
    x_ref, x_sparse = x.clone().requires_grad_(), x.clone().requires_grad_()
    gy = torch.randn(batch, OUT)
    y_ref, y = ref(x_ref), layer(x_sparse)
    torch.testing.assert_close(y, y_ref, **tolerance(IN))
    y_ref.backward(gy)
    y.backward(gy)
    torch.testing.assert_close(x_sparse.grad, x_ref.grad, **tolerance(OUT))
    torch.testing.assert_close(layer.bias.grad, ref.bias.grad, **tolerance(batch))
    # the gradient of the active weights is the masked path's gradient at those positions ...
    torch.testing.assert_close(layer.values.grad, ref.weight.grad[mask], **tolerance(batch))
    # ... and the dense gradient the rules read is exactly zero outside the mask
    dense = layer.dense_grad()
    assert dense.shape == mask.shape and torch.count_nonzero(dense[~mask]) == 0


@pytest.mark.parametrize("executor", list(EXECUTORS.values()), ids=list(EXECUTORS))
def test_dense_gradient_on_request_is_the_full_weight_gradient(executor):
    mask = masks_to_cover()["random"]
    ref, layer = reference_and_compressed(mask, executor())
    layer.dense_grad_wanted = lambda: True  # what a RigL update step asks for
    x, gy = torch.randn(9, IN), torch.randn(9, OUT)
    ref(x).backward(gy)
    layer(x).backward(gy)
    torch.testing.assert_close(layer.dense_grad(), ref.weight.grad, **tolerance(9))  # pruned entries too
    torch.testing.assert_close(layer.values.grad, ref.weight.grad[mask], **tolerance(9))
    layer(x).backward(gy)  # gradient accumulation: the dense gradient accumulates like .grad
    torch.testing.assert_close(layer.dense_grad(), 2 * ref.weight.grad, **tolerance(18))


@pytest.mark.parametrize("executor", list(EXECUTORS.values()), ids=list(EXECUTORS))
def test_inputs_with_token_dimensions_and_no_bias(executor):
    mask = masks_to_cover()["random"]
    ref, layer = reference_and_compressed(mask, executor(), bias=False)
    x = torch.randn(3, 5, IN)
    torch.testing.assert_close(layer(x), ref(x), **tolerance(IN))


@pytest.mark.skipif(bool(SPARSEPROP_MISSING), reason=str(SPARSEPROP_MISSING))
@pytest.mark.parametrize("stride,padding,kernel", [(1, 1, 3), (2, 1, 3), (1, 0, 1), (2, 2, 5)])
def test_sparseprop_conv_matches_the_masked_dense_conv(stride, padding, kernel):
    torch.manual_seed(0)
    ref = nn.Conv2d(6, 10, kernel, stride=stride, padding=padding)
    mask = torch.rand_like(ref.weight) < 0.2
    mask[0] = False  # an output channel with no weight at all
    with torch.no_grad():
        ref.weight.mul_(mask)
    layer = nn.Conv2d(6, 10, kernel, stride=stride, padding=padding)
    layer.load_state_dict(ref.state_dict())
    compress(layer, "conv", mask, SparsePropExecutor())
    x = torch.randn(5, 6, 11, 11)
    x_ref, x_sparse = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y = ref(x_ref), layer(x_sparse)
    torch.testing.assert_close(y, y_ref, **tolerance(6 * kernel * kernel))
    gy = torch.randn_like(y)
    y_ref.backward(gy)
    y.backward(gy)
    torch.testing.assert_close(x_sparse.grad, x_ref.grad, **tolerance(10 * kernel * kernel))
    torch.testing.assert_close(layer.values.grad, ref.weight.grad[mask], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("executor", list(EXECUTORS.values()), ids=list(EXECUTORS))
def test_weights_grown_at_exactly_zero_get_gradients_and_move(executor):
    mask = masks_to_cover()["random"]
    ref, layer = reference_and_compressed(mask, executor())
    zero_active = mask.nonzero()[:5]
    with torch.no_grad():  # active weights at exactly 0, as RigL/SET grow them
        layer.values[
            layer.plan.gather(torch.zeros_like(mask).index_put_(tuple(zero_active.t()), torch.tensor(True)))
        ] = 0
    assert layer.plan.nnz == int(mask.sum())  # the structure follows the mask, not the values
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.randn(16, IN)).pow(2).sum().backward()
    optimizer.step()
    moved = layer.weight.detach()[tuple(zero_active.t())]
    assert bool((moved != 0).all())


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.floats(0.0, 1.0), st.integers(0, 2**16))
def test_plan_round_trips_and_its_csr_indices_describe_the_mask(rows, cols, density, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, cols, generator=g) < density
    plan = Plan(mask)
    values = torch.arange(1, plan.nnz + 1, dtype=torch.float32)
    dense = plan.scatter(values)
    assert torch.equal(dense != 0, mask) and torch.equal(plan.gather(dense), values)
    crow, col = plan.csr()
    rebuilt = torch.sparse_csr_tensor(crow.long(), col.long(), values, (rows, cols)).to_dense()
    assert torch.equal(rebuilt, dense)
    crow_t, col_t, perm = plan.csr_transposed()
    rebuilt_t = torch.sparse_csr_tensor(crow_t.long(), col_t.long(), values[perm], (cols, rows)).to_dense()
    assert torch.equal(rebuilt_t, dense.t())


def test_plans_follow_the_mask_even_when_every_active_weight_is_zero():
    mask = masks_to_cover()["random"]
    layer = nn.Linear(IN, OUT)
    with torch.no_grad():
        layer.weight.zero_()
    compress(layer, "layer", mask, CSRExecutor())
    assert layer.plan.nnz == int(mask.sum()) and torch.count_nonzero(layer.values) == 0


def test_decompress_restores_a_plain_layer_with_the_same_function():
    mask = masks_to_cover()["random"]
    ref, layer = reference_and_compressed(mask, CSRExecutor())
    x = torch.randn(4, IN)
    expected = layer(x)
    plain = decompress(layer)
    assert type(plain) is nn.Linear and plain.weight.shape == (OUT, IN)
    torch.testing.assert_close(plain(x), expected, **tolerance(IN))
    assert torch.equal(plain.weight.detach(), ref.weight.detach())


def test_state_dict_is_the_dense_weight_and_loads_back_at_the_active_positions():
    mask = masks_to_cover()["random"]
    ref, layer = reference_and_compressed(mask, CSRExecutor())
    state = layer.state_dict()
    assert set(state) == {"weight", "bias"} and torch.equal(state["weight"], ref.weight.detach())
    other = nn.Linear(IN, OUT)
    compress(other, "layer", mask, CSRExecutor())
    other.load_state_dict(state)
    assert torch.equal(other.values.detach(), ref.weight.detach()[mask])
    plain = nn.Linear(IN, OUT)
    plain.load_state_dict(layer.state_dict())  # a masked-path model reads it unchanged
    x = torch.randn(3, IN)
    torch.testing.assert_close(plain(x), F.linear(x, ref.weight, ref.bias))
