"""Small tensor helpers that keep large temporaries out of hot paths."""

from __future__ import annotations

import torch

CHUNK = 1 << 20


def all_finite(tensor: torch.Tensor) -> bool:
    """``bool(torch.isfinite(tensor).all())`` without its weight-sized temporaries.

    ``isfinite`` of a float tensor builds ``abs()`` (as large as the tensor) and a bool tensor:
    115 MiB for a 4096x4096 fp32 gradient. A finite sum means every element is finite (any NaN or
    inf makes the sum NaN or inf); only a non-finite sum (a real NaN/inf, or an overflow of large
    finite values) is checked element by element, a chunk at a time.
    """
    if not tensor.is_floating_point() and not tensor.is_complex():
        return True
    if bool(torch.isfinite(tensor.sum())):
        return True
    return all(bool(torch.isfinite(chunk).all()) for chunk in tensor.reshape(-1).split(CHUNK))
