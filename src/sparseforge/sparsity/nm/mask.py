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
    keep, factor = nm_mask_and_factor(weight, n, m, dim)
    return factor.bool() if keep is None else keep


@torch.no_grad()
def nm_mask_and_factor(weight: torch.Tensor, n: int, m: int, dim: int = 1) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(keep, factor)``: the mask of :func:`nm_mask` and the same mask in the weight's dtype
    (1 kept, 0 pruned), what the forward pass multiplies by.

    ``keep`` is None when the mask was computed in the weight's dtype (the fast path for 1:M
    and 2:M): ``factor.bool()`` is the bool mask then, made only where it is needed.
    """
    if not 0 < n <= m:
        raise ValueError(f"N:M needs 0 < N <= M, got {n}:{m}")
    w = weight.detach().movedim(dim, -1)
    if w.shape[-1] % m:
        raise ValueError(f"{_dim_name(dim)} dimension {w.shape[-1]} is not divisible by M={m}")
    groups = w.abs().reshape(-1, m)
    if n <= 2 and n < m and groups.dtype in _SAME_SIZE_INT and groups.numel():
        factor = _factor_by_max(groups, n)
        if factor is not None:
            return None, factor.reshape(w.shape).movedim(-1, dim)
    keep = _keep_largest(groups, n).reshape(w.shape).movedim(-1, dim)
    return keep, keep.to(weight.dtype)


def _dim_name(dim: int) -> str:
    return "input" if dim == 1 else "output" if dim == 0 else f"dim-{dim}"


def _keep_largest(groups: torch.Tensor, n: int) -> torch.Tensor:
    """Per row, True at the ``n`` largest entries; among equal values the lower index wins.

    A stable descending sort defines the rule; small ``n`` or ``m - n`` pick or drop entries one
    at a time with ``argmax``/``argmin``, which give the same result. (For 1:M and 2:M without
    ties, ``_factor_by_max`` is much faster and gives the same mask.)
    """
    m = groups.shape[1]
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


#: The integer type of the same width: the bits of non-negative floats (|w|) sort like the values.
_SAME_SIZE_INT = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def _factor_by_max(groups: torch.Tensor, n: int) -> torch.Tensor | None:
    """The N:M mask of ``groups`` (|w|, rows of M) in their dtype, by ``n`` passes of "keep the
    entries equal to the group's max"; None if a group met a tie (or holds inf/NaN), where the
    position rule must decide.

    Why this shape of computation: on a CPU, reductions and broadcasts over rows of only M
    entries, and every kernel that writes bool, run several times slower than plain elementwise
    passes. So the group max is an integer ``amax`` over the bits (exact, and no NaN handling),
    it is spread to the full shape by one contiguous copy, and the comparison writes the result
    straight into that copy in the weight's dtype. A tie shows up as a group with more than
    ``n`` entries, so one sum checks all groups: every group holds at least ``n``.
    """
    int_dtype = _SAME_SIZE_INT[groups.dtype]
    values, factor = groups, None
    for step in range(n):
        top = values.view(int_dtype).amax(dim=1, keepdim=True)
        if step == 0 and int(top.max()) >= _INF_BITS[groups.dtype]:
            return None  # inf or NaN: the position rule decides
        top = top.view(groups.dtype).expand(values.shape).contiguous()
        is_max = torch.ge(values, top, out=top)  # 1 where |w| is its group's max, else 0
        if step + 1 < n:  # zero the maxima (exactly: x - x * 1 = 0, x - x * 0 = x) for the next pass
            values = torch.addcmul(values, values, is_max, value=-1)
        factor = is_max if factor is None else factor.add_(is_max)
    # a tie in a group leaves it more than n entries (or an entry at 2): count them all at once
    total = factor.sum(dtype=torch.float32 if factor.numel() < 2**24 else torch.float64)
    if int(total) != n * groups.shape[0]:
        return None
    return factor


_INF_BITS = {
    dtype: int(torch.tensor(float("inf"), dtype=dtype).view(int_dtype)) for dtype, int_dtype in _SAME_SIZE_INT.items()
}


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
