"""SHARP's connectivity: random kernel-level initial masks and drop/regrow rewiring.

A conv layer's connectivity is kept or dropped per whole k x k kernel, so every function here
works on the (out units x input features) connection matrix: the mask itself for a linear layer,
one entry per kernel for a conv. At the conv -> linear flatten, channel ``c`` of the previous
layer owns the input features ``[c*HW, (c+1)*HW)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparseforge.methods.sharp.units import INPUT_RANK
from sparseforge.models.sharp import WeightLayer


def connections(mask: torch.Tensor) -> torch.Tensor:
    """The out x in connection matrix of a (kernel-level) mask."""
    if mask.dim() == 2:
        return mask.bool()
    flat = mask.flatten(2)
    kernel = flat.any(-1)
    if not bool((flat.all(-1) == kernel).all()):
        raise ValueError("conv mask is not kernel-level: some kernel is only partly connected")
    return kernel


def full_mask(conn: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Back from a connection matrix to a mask of ``like``'s shape."""
    if like.dim() == 2:
        return conn.clone()
    return conn.view(*conn.shape, *[1] * (like.dim() - 2)).expand_as(like).clone()


def random_mask(weight: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Independent Bernoulli(density) keep decision per weight (linear) or per kernel (conv)."""
    shape = weight.shape[:2]
    conn = torch.rand(shape, generator=generator) < density
    return full_mask(conn, torch.empty(weight.shape, dtype=torch.bool)).to(weight.device)


def input_ranks(layer: WeightLayer, previous_ranks: torch.Tensor | None, in_features: int) -> torch.Tensor:
    """The rank of every input feature of ``layer`` (the previous layer's unit ranks, expanded)."""
    if previous_ranks is None:
        return torch.full((in_features,), INPUT_RANK, dtype=torch.long)
    return previous_ranks.repeat_interleave(layer.in_group)


@dataclass
class RewireStats:
    dropped: int  # connections removed (kernels for convs)
    grown: int  # connections added, in total
    elements_per_connection: int  # k*k for convs, 1 for linear
    grown_into_training: int = 0  # of ``grown``: the fallback into training units

    @property
    def shortfall(self) -> int:
        """Connections that could not be regrown because candidates ran out."""
        return self.dropped - self.grown


def _sample(candidates: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    flat = candidates.flatten().nonzero().flatten()
    return flat[torch.randperm(len(flat), generator=generator)[: min(n, len(flat))]]


@torch.no_grad()
def rewire_layer(
    mask: torch.Tensor,
    in_ranks: torch.Tensor,
    out_ranks: torch.Tensor,
    generator: torch.Generator,
    fallback_into_training: bool = True,
) -> tuple[torch.Tensor, RewireStats]:
    """Drop every connection from an idle input into a non-idle unit; regrow as many at random
    into idle units (from any input, where absent). Returns the new mask and the counts.

    When the layer has too few absent links into idle units (every unit selected, as happens in
    narrow convs under the early ~99% thresholds), the authors' code lets the density drop. With
    ``fallback_into_training`` the rest are regrown into training (rank-1) units from non-idle
    inputs instead, which keeps the count exact and still never touches a fine-tuning or frozen
    unit, nor creates an idle -> active link.
    """
    conn = connections(mask).cpu()
    idle_in = (in_ranks == 0).view(1, -1)
    active_out = (out_ranks != 0).view(-1, 1)
    drop = conn & idle_in & active_out
    n_drop = int(drop.sum())
    conn = conn & ~drop
    chosen = _sample(~conn & (out_ranks == 0).view(-1, 1), n_drop, generator)
    conn.view(-1)[chosen] = True
    n_idle = len(chosen)
    n_training = 0
    if fallback_into_training and n_idle < n_drop:
        extra = _sample(~conn & (out_ranks == 1).view(-1, 1) & ~idle_in, n_drop - n_idle, generator)
        conn.view(-1)[extra] = True
        n_training = len(extra)
    per = mask[0, 0].numel() if mask.dim() > 2 else 1
    stats = RewireStats(n_drop, n_idle + n_training, per, n_training)
    return full_mask(conn, mask.cpu()).to(mask.device), stats
