"""N:M masks: keep the N largest |w| in every group of M consecutive weights along the input dimension.

Grouping order (the one 2:4 kernels, cuSPARSELt/CUTLASS and NVIDIA ASP ``m4n2_1d`` use): the
input dimension (dim 1 of the weight) is made innermost and cut into runs of M.

- ``nn.Linear`` weight (out, in): runs of M consecutive ``in`` entries of one output row, i.e.
  along the reduction dimension of ``y = x W^T``.
- ``nn.Conv{1,2,3}d`` weight (K, C, R, S...): viewed as (K, R, S..., C), runs of M consecutive
  input channels at a fixed (k, r, s). This is ASP's / NHWC layout, not runs over the kernel's
  spatial positions (which no sparse kernel can use).

Column-wise grouping (``dim=0``; PGF's ``sparse_dim: COL``, used by its Swin-V2 recipe): the
output dimension is made innermost instead, so a Linear weight has runs of M consecutive
``out`` entries of one input column, and a conv runs of M output channels at a fixed (c, r, s).
Such a mask is not 2:4 along the reduction dimension, so it cannot become a semi-structured
tensor.

Ties are broken by position: a stable sort keeps the lower index first, so the mask is a pure
function of the weight values and every DDP rank computes the same one.
"""

from __future__ import annotations

import torch


def input_dim(weight: torch.Tensor) -> int:
    """Length of the dimension the groups run along (in_features, or input channels per group)."""
    return weight.shape[1]


#: The dimension the groups run along: row = dim 1 (input; PGF's ROW, the default), col = dim 0.
GROUP_DIMS = {"row": 1, "col": 0}


@torch.no_grad()
def nm_mask(weight: torch.Tensor, n: int, m: int, dim: int = 1) -> torch.Tensor:
    """Boolean mask, same shape as ``weight``, with exactly ``n`` True in every group of ``m``
    consecutive entries along ``dim`` (1: input, the default; 0: output, column-wise).

    Computed from ``weight`` as given (pass the fp32 master weight, not an autocast copy: the
    ranking of magnitudes can change when values are rounded).
    """
    if not 0 < n <= m:
        raise ValueError(f"N:M needs 0 < N <= M, got {n}:{m}")
    w = weight.detach().movedim(dim, -1)
    if w.shape[-1] % m:
        raise ValueError(f"{_dim_name(dim)} dimension {w.shape[-1]} is not divisible by M={m}")
    keep = _keep_largest(w.abs().reshape(-1, m), n)
    return keep.reshape(w.shape).movedim(-1, dim)


def _dim_name(dim: int) -> str:
    return "input" if dim == 1 else "output" if dim == 0 else f"dim-{dim}"


def _keep_largest(groups: torch.Tensor, n: int) -> torch.Tensor:
    """Per row, True at the ``n`` largest entries; among equal values the lower index wins.

    A stable descending sort defines the rule. For small ``n`` (1:M, 2:M, the usual targets) the
    mask comes from ``n`` passes of a per-group max instead: one reduction and one comparison per
    pass, several times faster than a sort or ``argmax`` over rows of M. It is exact whenever no
    group has a tie among the values it compares (checked with one count); otherwise the
    tie-aware rule below decides.
    """
    m = groups.shape[1]
    if n <= 2 and n < m:
        keep = _keep_largest_by_max(groups, n)
        if keep is not None:
            return keep
    if min(n, m - n) > 2:
        order = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
        return torch.zeros(groups.shape, dtype=torch.bool, device=groups.device).scatter_(1, order, True)
    rows = torch.arange(groups.shape[0], device=groups.device)
    if n <= m - n:  # pick the n largest, one at a time
        keep = torch.zeros(groups.shape, dtype=torch.bool, device=groups.device)
        values = groups.clone()
        for _ in range(n):
            best = values.argmax(dim=1)
            keep[rows, best] = True
            values[rows, best] = -torch.inf
        return keep
    # drop the m - n smallest, one at a time; among equal values the higher index goes first
    keep = torch.ones(groups.shape, dtype=torch.bool, device=groups.device)
    values = groups.flip(1).clone()
    for _ in range(m - n):
        worst = values.argmin(dim=1)
        keep[rows, m - 1 - worst] = False
        values[rows, worst] = torch.inf
    return keep


def _keep_largest_by_max(groups: torch.Tensor, n: int) -> torch.Tensor | None:
    """``n`` passes of "keep the entries equal to the group's max"; None if any pass met a tie
    (or a NaN), where the position rule must decide."""
    values = groups if n == 1 else groups.clone()
    keep = None
    for _ in range(n):
        top = values.amax(dim=1, keepdim=True)
        if bool(torch.isnan(top).any()):  # amax propagates NaN: the position rule decides
            return None
        is_max = values >= top  # == top (no NaN here); the >= kernel is the faster one
        keep = is_max if keep is None else keep.logical_or_(is_max)
        if n > 1:
            values.masked_fill_(is_max, -torch.inf)
    if int(keep.count_nonzero()) != n * groups.shape[0]:
        return None  # a tie gave some group an extra entry
    return keep


def group_counts(tensor: torch.Tensor, m: int, dim: int = 1) -> torch.Tensor:
    """Number of nonzero entries in every group of ``m`` along ``dim`` (the N:M grouping), 1-D."""
    w = tensor.movedim(dim, -1)
    if w.shape[-1] % m:
        raise ValueError(f"{_dim_name(dim)} dimension {w.shape[-1]} is not divisible by M={m}")
    return (w.reshape(-1, m) != 0).sum(dim=1)


def satisfies_nm(tensor: torch.Tensor, n: int, m: int, dim: int = 1) -> bool:
    """Whether every group of ``m`` along ``dim`` holds at most ``n`` nonzeros."""
    return bool((group_counts(tensor, m, dim) <= n).all())


def is_2to4_pattern(n: int, m: int) -> bool:
    """Whether every N:M mask of this pattern is also 2:4 along the same (input) dimension.

    True for 2:4, 1:2, 1:4 and for N <= 2 with M a multiple of 4 (1:8, 1:16, 1:32, 2:8): an
    aligned group of 4 then lies inside one group of M and can hold at most N <= 2 nonzeros.
    3:4, 4:8 and the intermediate SdGf stages such as 7:8 or 8:64 are not.
    """
    if m % 4 == 0:
        return n <= 2
    return 4 % m == 0 and n * (4 // m) <= 2


def satisfies_2to4(tensor: torch.Tensor) -> bool:
    """Whether the tensor itself is 2:4 along its input dimension (what the sparse kernels need)."""
    return input_dim(tensor) % 4 == 0 and satisfies_nm(tensor, 2, 4)
