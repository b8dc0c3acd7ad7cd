"""SHARP's unit ranks: selection by activation mass, promotion, freezing, idle re-initialisation.

Every output unit (conv channel or linear neuron) of every weight layer has an integer rank:
0 idle, 1 training, 2..m+1 fine-tuning, >= m+2 frozen. The network input counts as rank 99
(never idle). Ranks 0 and 1 are re-assigned every phase; the end of an episode promotes every
rank > 0 by one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from sparseforge.models.sharp import WeightLayer

INPUT_RANK = 99


def tau(t: float, period: float) -> float:
    """The cosine annealing factor 0.5 (1 + cos(pi t / K)).

    ``t`` is clamped to ``K`` so the threshold does not climb back up when a run has more
    phases than ``K`` (the authors' code never reaches that point: 15 phases, K = 30).
    """
    return 0.5 * (1.0 + math.cos(math.pi * min(t, period) / period))


def activation_percent(phase: int, tau_param: float, min_activation_perc: float) -> float:
    """rho_p = max(100 tau(max(p, 2)), floor) for the 1-based phase ``p``."""
    return max(100.0 * tau(max(phase, 2), tau_param), float(min_activation_perc))


@torch.no_grad()
def unit_scores(activations: Iterable[Sequence[torch.Tensor]], normaliser: int = 1024) -> list[torch.Tensor]:
    """Per-unit activation mass: the sum over samples and positions, over ``normaliser``.

    ``activations`` yields, per chunk of samples, the post-ReLU activation of every layer.
    """
    totals: list[torch.Tensor] | None = None
    for per_layer in activations:
        sums = [a.double().sum(dim=[d for d in range(a.dim()) if d != 1]) for a in per_layer]
        totals = sums if totals is None else [t + s for t, s in zip(totals, sums, strict=True)]
    if totals is None:
        raise ValueError("unit selection needs at least one sample")
    return [t / normaliser for t in totals]


def select_units(scores: torch.Tensor, ranks: torch.Tensor, percent: float) -> torch.Tensor:
    """New ranks: candidates (rank 0/1) in the shortest top-score prefix reaching ``percent`` of
    the layer's total mass become 1, the other candidates 0. Other ranks are unchanged.

    The total includes frozen units. A layer with no activation at all keeps every candidate
    training (there is nothing to rank them by).
    """
    order = torch.argsort(scores, descending=True, stable=True)
    cumulative = torch.cumsum(scores[order], 0)
    total = cumulative[-1]
    candidates = ranks <= 1
    new = ranks.clone()
    if total <= 0:
        new[candidates] = 1
        return new
    # first position where the cumulative mass reaches the target, inclusive
    length = int(torch.searchsorted(cumulative, total * (percent / 100.0)).item()) + 1
    selected = torch.zeros_like(candidates)
    selected[order[: min(length, len(order))]] = True
    new[candidates & selected] = 1
    new[candidates & ~selected] = 0
    return new


def promote(ranks: torch.Tensor) -> torch.Tensor:
    """End of episode: every rank > 0 goes up by one; idle units stay idle."""
    return torch.where(ranks > 0, ranks + 1, ranks)


def frozen_units(layer: WeightLayer, ranks: torch.Tensor, stm_num_tasks: int, activation_replay: bool) -> torch.Tensor:
    """Units whose incoming weights and bias must not change.

    Below the cut-off (activation replay) a unit freezes right after its own episode, so stored
    activations stay valid; above it, units keep fine-tuning while their classes are replayed.
    """
    if layer.early and activation_replay:
        return ranks > 1
    return ranks > stm_num_tasks + 1


@torch.no_grad()
def reinit_idle_units(
    layer: WeightLayer, ranks: torch.Tensor, generator: torch.Generator, fan_out: str = "idle"
) -> None:
    """Kaiming-normal (fan_out, ReLU gain) incoming weights and zero bias for idle units.

    ``fan_out="idle"``, as the authors' ``Network.re_initialize_u0``: Kaiming's fan-out is taken
    from the slice of idle rows, ``n_idle x k x k`` (``n_idle`` for a linear layer), so std =
    sqrt(2 / (n_idle x k^2)); with few idle units the fresh weights are much larger than the
    layer's initial ones (sqrt(out / n_idle) times). ``fan_out="layer"``: the whole layer's
    ``out x k x k``, the scale of a fresh Kaiming initialisation of the layer.
    """
    weight, bias = layer.module.weight, layer.module.bias
    idle = (ranks == 0).to(weight.device)
    n_idle = int(idle.sum())
    if n_idle == 0:
        return
    std = idle_reinit_std(n_idle if fan_out == "idle" else weight.shape[0], weight.shape)
    fresh = torch.empty((n_idle, *weight.shape[1:]), dtype=weight.dtype).normal_(0.0, std, generator=generator)
    weight[idle] = fresh.to(weight.device)
    if bias is not None:
        bias[idle] = 0.0


def idle_reinit_std(n_idle: int, shape: Sequence[int]) -> float:
    """The std of Kaiming-normal (ReLU gain, fan_out) on a slice of ``n_idle`` rows of a weight."""
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return math.sqrt(2.0) / math.sqrt(n_idle * receptive)
