"""N:M masks: exact counts, the grouping order real 2:4 kernels need, deterministic ties."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.sparsity.nm.mask import (
    group_counts,
    is_2to4_pattern,
    nm_mask,
    nm_mask_and_factor,
    satisfies_2to4,
    satisfies_nm,
)

PATTERNS = [(2, 4), (1, 4), (1, 8), (1, 16), (1, 32), (3, 8), (1, 2)]


@st.composite
def weight_and_pattern(draw):
    n, m = draw(st.sampled_from(PATTERNS))
    kind = draw(st.sampled_from(["linear", "conv1d", "conv2d"]))
    out = draw(st.integers(1, 6))
    groups = draw(st.integers(1, 4))
    shape = {"linear": (out, groups * m), "conv1d": (out, groups * m, 3), "conv2d": (out, groups * m, 2, 3)}[kind]
    seed = draw(st.integers(0, 2**16))
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)), n, m


@settings(max_examples=60, deadline=None)
@given(weight_and_pattern())
def test_mask_keeps_exactly_n_largest_of_every_group(case):
    w, n, m = case
    mask = nm_mask(w, n, m)
    assert mask.shape == w.shape and mask.dtype == torch.bool
    assert bool((group_counts(mask, m) == n).all())
    assert satisfies_nm(w * mask, n, m)
    # the kept entries are the n largest |w| of their group: min kept >= max dropped, per group
    groups_w = w.movedim(1, -1).reshape(-1, m).abs()
    groups_k = mask.movedim(1, -1).reshape(-1, m)
    kept_min = torch.where(groups_k, groups_w, torch.inf).min(dim=1).values
    dropped_max = torch.where(groups_k, -torch.inf, groups_w).max(dim=1).values
    assert bool((kept_min >= dropped_max).all())


def test_linear_groups_run_along_in_features():
    # row 0: the big values sit at in-positions 1 and 6, one per group of 4 along in_features
    w = torch.tensor([[0.1, 9.0, 0.2, 0.3, 0.4, 0.5, 8.0, 0.6]])
    assert nm_mask(w, 1, 4).tolist() == [[False, True, False, False, False, False, True, False]]


def test_conv_groups_run_along_input_channels_at_fixed_position():
    # (K=1, C=4, R=1, S=2): at spatial position s=0 channel 2 is largest, at s=1 channel 0
    w = torch.zeros(1, 4, 1, 2)
    w[0, :, 0, 0] = torch.tensor([0.1, 0.2, 5.0, 0.3])
    w[0, :, 0, 1] = torch.tensor([7.0, 0.2, 0.1, 0.3])
    mask = nm_mask(w, 1, 4)
    assert mask[0, :, 0, 0].tolist() == [False, False, True, False]
    assert mask[0, :, 0, 1].tolist() == [True, False, False, False]
    # grouping over spatial positions (NM-sparsity's plain conv mode) would have kept both of
    # channel 0's entries together; here every (k, r, s) column keeps exactly one channel
    assert group_counts(mask, 4).tolist() == [1, 1]


def test_ties_keep_the_lower_index_every_time():
    w = torch.ones(3, 8)
    w[1] = -1.0  # equal magnitudes, other sign
    mask = nm_mask(w, 2, 4)
    expected = [True, True, False, False] * 2
    assert mask.tolist() == [expected] * 3
    assert torch.equal(mask, nm_mask(w.clone(), 2, 4))


@settings(max_examples=60, deadline=None)
@given(
    nm=st.sampled_from(PATTERNS),
    kind=st.sampled_from(["linear", "conv2d"]),
    groups=st.integers(1, 4),
    width=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_column_grouping_keeps_n_of_every_m_along_the_output_dimension(nm, kind, groups, width, seed):
    n, m = nm
    shape = (groups * m, width) if kind == "linear" else (groups * m, width, 2, 3)
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    mask = nm_mask(w, n, m, dim=0)
    assert mask.shape == w.shape and bool((group_counts(mask, m, dim=0) == n).all())
    assert satisfies_nm(w * mask, n, m, dim=0)
    # PGF's COL mode (get_sparse_mask, sparse_dim=1) groups the transposed weight's rows: the same
    # as row grouping of the weight with its first two dimensions swapped
    assert torch.equal(mask, nm_mask(w.transpose(0, 1), n, m).transpose(0, 1))


def test_mask_rejects_indivisible_output_dimension_when_grouping_columns():
    with pytest.raises(ValueError, match="output dimension 6 is not divisible by M=4"):
        nm_mask(torch.randn(6, 8), 1, 4, dim=0)


def test_mask_rejects_indivisible_input_dimension():
    with pytest.raises(ValueError, match="not divisible by M=8"):
        nm_mask(torch.randn(4, 12), 1, 8)


def _brute_force_2to4(n: int, m: int) -> bool:
    """Every placement of n nonzeros per group of m, over enough groups to cover two aligned 4s, is 2:4."""
    groups = 2 * 4 // math.gcd(m, 4)
    per_group = list(itertools.combinations(range(m), n))
    for choice in itertools.product(per_group, repeat=groups):
        row = torch.zeros(groups * m)
        for g, keep in enumerate(choice):
            row[[g * m + k for k in keep]] = 1.0
        if not satisfies_nm(row.reshape(1, -1), 2, 4):
            return False
    return True


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (1, 2), (1, 8), (2, 8), (3, 8), (1, 16), (3, 4), (4, 8)])
def test_2to4_compatibility_rule_matches_brute_force(n, m):
    assert is_2to4_pattern(n, m) == _brute_force_2to4(n, m)


def test_satisfies_2to4_on_real_masks():
    w = torch.randn(8, 64)
    assert satisfies_2to4(w * nm_mask(w, 1, 8))
    assert satisfies_2to4(w * nm_mask(w, 2, 4))
    front_heavy = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.1, 0.1, 0.1, 0.1]])  # 4:8 keeps one whole aligned 4
    assert not satisfies_2to4(front_heavy * nm_mask(front_heavy, 4, 8))
    assert not satisfies_2to4(torch.ones(2, 6))  # input dimension not a multiple of 4


@settings(max_examples=60, deadline=None)
@given(
    nm=st.sampled_from([(1, 4), (2, 4), (3, 4), (1, 8), (2, 8), (4, 8), (7, 8), (6, 8), (15, 16), (8, 16), (1, 32)]),
    rows=st.integers(1, 20),
    levels=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_fast_paths_agree_with_the_stable_sort_rule_even_with_ties(nm, rows, levels, seed):
    n, m = nm
    # few distinct magnitudes: plenty of ties
    w = torch.randint(-levels, levels + 1, (rows, 2 * m), generator=torch.Generator().manual_seed(seed)).float()
    groups = w.abs().reshape(-1, m)
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
    reference = torch.zeros(groups.shape, dtype=torch.bool).scatter_(1, order, True).reshape(w.shape)
    assert torch.equal(nm_mask(w, n, m), reference)


def _stable_sort_mask(w: torch.Tensor, n: int, m: int, dim: int) -> torch.Tensor:
    """The rule by definition: per group, the n largest |w| by a stable descending sort."""
    grouped = w.movedim(dim, -1)
    groups = grouped.abs().reshape(-1, m)
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
    keep = torch.zeros(groups.shape, dtype=torch.bool).scatter_(1, order, True)
    return keep.reshape(grouped.shape).movedim(-1, dim)


@settings(max_examples=80, deadline=None)
@given(
    nm=st.sampled_from([(1, 2), (1, 4), (2, 4), (1, 8), (2, 8), (1, 32)]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    special=st.sampled_from(["none", "ties", "zeros", "inf", "nan", "negative_zero", "tiny"]),
    dim=st.sampled_from([0, 1]),
    rows=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_mask_in_the_weight_dtype_is_the_stable_sort_rule_with_any_values(nm, dtype, special, dim, rows, seed):
    # the 1:M / 2:M fast path (integer max over the bits, one tie count) must give the rule's mask
    # bit for bit, and fall back to it on ties, zeros, inf, NaN, -0.0 and subnormal values
    n, m = nm
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(2 * m, rows * m, generator=g, dtype=torch.float64)
    if special == "ties":
        w = w.round()
    elif special == "zeros":
        w[:, ::3] = 0.0
    elif special in ("inf", "nan"):
        w[0, 1] = float(special)
        w[1, -1] = -float(special)
    elif special == "negative_zero":
        w[:, ::2] = -0.0
    elif special == "tiny":
        w = w * torch.finfo(dtype).tiny / 4  # subnormal in the weight's dtype
    w = w.to(dtype)
    keep, factor = nm_mask_and_factor(w, n, m, dim)
    reference = _stable_sort_mask(w, n, m, dim)
    assert torch.equal(nm_mask(w, n, m, dim), reference)
    assert factor.dtype == dtype and torch.equal(factor, reference.to(dtype))
    assert keep is None or torch.equal(keep, reference)


@pytest.mark.parametrize("n,m", [(1, 4), (2, 4), (1, 8), (2, 8)])
def test_a_nan_group_and_a_tied_group_do_not_cancel_out_in_the_tie_count(n, m):
    # the NaN group gets fewer than n entries and the tied group more: one count alone would balance
    w = torch.rand(3, 2 * m) + 0.5
    w[0, 0] = float("nan")
    w[1, : n + 1] = 5.0  # n + 1 equal maxima
    assert torch.equal(nm_mask(w, n, m), _stable_sort_mask(w, n, m, 1))
    keep, factor = nm_mask_and_factor(w, n, m)
    assert torch.equal(factor, _stable_sort_mask(w, n, m, 1).float())
