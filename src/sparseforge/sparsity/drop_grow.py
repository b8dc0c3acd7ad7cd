"""Drop-and-grow inside one task's mask, with weights of earlier tasks frozen (CL-with-DST).

``drop_and_grow`` makes one topology update of a ``MaskSet``. In every layer it removes
``n = ceil(rate * n_active)`` active weights by the drop criterion and grows exactly ``n`` by
the grow criterion, so every layer keeps its count (CL-with-DST's release grows with Bernoulli
draws, whose count only matches in expectation, so layer densities drift; here they cannot).
``n`` is capped by the layer's inactive, unfrozen weights, so the count can always be met.

Drop criteria (among the active weights, frozen ones included: a task may stop reusing a weight):

- ``magnitude``: the ``n`` smallest ``|w|``;
- ``set`` (Mocanu et al.): ``ceil(n/2)`` of the smallest non-negative weights and the rest of the
  negative weights closest to zero; a side with too few weights leaves its share to the other;
- ``taylor_fo``: the ``n`` smallest ``(w * g)^2``, the first-order Taylor estimate of the loss
  change of removing ``w``, with ``g`` the dense gradient of the update step.

Grow criteria (candidates: every weight not kept by the drop and not frozen, so weights dropped in
this update may come back):

- ``random``: uniformly at random (a generator seeded by ``key`` and the layer's position);
- ``random_unfired``: at random among weights never active in this task (``MaskSet.fired``);
  when those run out, the rest at random among the other candidates (ITOP-style exploration);
- ``gradient``: the largest ``|g|`` of the dense gradient (RigL);
- ``momentum``: the largest ``|m / (sqrt(v) + 1e-8)|`` of Adam's moments (Adam's bias correction is
  one positive factor per tensor, so the ranking is that of ``m_hat / sqrt(v_hat)``), or the largest
  ``|momentum_buffer|`` of SGD. Those read the optimizer's state at inactive weights, so their
  gradients must reach the optimizer (``MaskSet.before_step(mask_pruned=False)``).

Scores tied at the cut go to the lowest flat indices (``top_n_indices``); grown weights are installed by
``MaskSet.set_masks`` (value 0, optimizer state reset).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from enum import Enum

import torch

from sparseforge.sparsity.masks import MaskSet
from sparseforge.sparsity.placement import indices_to_mask, top_n_indices, top_n_mask
from sparseforge.utils.seeding import seeded_generator

GradDict = Mapping[str, torch.Tensor | None]


class DropCriterion(str, Enum):
    magnitude = "magnitude"
    set = "set"
    taylor_fo = "taylor_fo"


class GrowCriterion(str, Enum):
    random = "random"
    random_unfired = "random_unfired"
    gradient = "gradient"
    momentum = "momentum"


def needs_dense_grad(drop: DropCriterion, grow: GrowCriterion) -> bool:
    """Whether an update reads the dense gradient of its step."""
    return drop is DropCriterion.taylor_fo or grow is GrowCriterion.gradient


def n_to_move(n_active: int, n_free: int, rate: float) -> int:
    """``ceil(rate * n_active)`` (the release's count), capped by the free candidates ``n_free``."""
    return min(math.ceil(rate * n_active), n_free)


def momentum_scores(optimizer: torch.optim.Optimizer | None, weight: torch.Tensor) -> torch.Tensor:
    """``|m / (sqrt(v) + 1e-8)|`` (Adam, AdamW) or ``|momentum_buffer|`` (SGD) of ``weight``."""
    state = optimizer.state.get(weight, {}) if optimizer is not None else {}
    if "exp_avg" in state and "exp_avg_sq" in state:
        return state["exp_avg"].div(state["exp_avg_sq"].sqrt().add_(1e-8)).abs_()
    if state.get("momentum_buffer") is not None:
        return state["momentum_buffer"].abs()
    raise ValueError(
        "momentum growth reads the optimizer's momentum, but this optimizer keeps none for the weight "
        "(use Adam/AdamW, or SGD with momentum > 0)"
    )


def drop_mask(
    criterion: DropCriterion, mask: torch.Tensor, weight: torch.Tensor, n: int, grad: torch.Tensor | None = None
) -> torch.Tensor:
    """The active weights that stay: ``mask`` less exactly ``n`` of its weights."""
    if n <= 0:
        return mask.clone()
    w = weight.detach()
    if criterion is DropCriterion.magnitude:
        dropped = top_n_mask(w.abs().masked_fill_(~mask, math.inf), n, largest=False)
    elif criterion is DropCriterion.taylor_fo:
        g = grad if grad is not None else torch.zeros_like(w)
        dropped = top_n_mask((w * g).pow_(2).masked_fill_(~mask, math.inf), n, largest=False)
    else:  # set
        positive, negative = mask & (w >= 0), mask & (w < 0)
        n_pos = min(math.ceil(n / 2), int(positive.count_nonzero()))
        n_neg = min(n - n_pos, int(negative.count_nonzero()))
        n_pos = n - n_neg
        dropped = top_n_mask(w.masked_fill(~positive, math.inf), n_pos, largest=False)
        dropped |= top_n_mask(w.masked_fill(~negative, -math.inf), n_neg, largest=True)
    return mask & ~dropped


def grow_scores(
    criterion: GrowCriterion,
    weight: torch.Tensor,
    fired: torch.Tensor,
    grad: torch.Tensor | None,
    optimizer: torch.optim.Optimizer | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """Higher = grown first (a new tensor; only the candidates' scores matter)."""
    if criterion is GrowCriterion.gradient:
        return grad.abs() if grad is not None else torch.zeros_like(weight)
    if criterion is GrowCriterion.momentum:
        return momentum_scores(optimizer, weight)
    scores = torch.rand(weight.shape, generator=generator, device=weight.device)
    if criterion is GrowCriterion.random_unfired:
        scores.add_(~fired)  # never active in this task: above every [0, 1) draw of the others
    return scores


@torch.no_grad()
def drop_and_grow(
    masks: MaskSet,
    frozen: Mapping[str, torch.Tensor] | None,
    rate: float,
    drop: DropCriterion,
    grow: GrowCriterion,
    dense_grads: GradDict | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    key: Sequence[int] = (0,),
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, int]]]:
    """One update of every layer of ``masks``: the new masks and, per layer, how many weights moved.

    ``frozen``: per layer, the weights earlier tasks own (never grown; may be dropped).
    ``key``: seeds the random draws (e.g. ``(seed, task, update)``); the layer's position is appended.
    """
    dense_grads = dense_grads or {}
    new_masks: dict[str, torch.Tensor] = {}
    counts: dict[str, dict[str, int]] = {}
    for position, name in enumerate(masks):
        mask, weight = masks[name], masks.weight(name)
        locked = frozen.get(name) if frozen else None
        free = ~mask if locked is None else ~mask & ~locked
        n = n_to_move(int(mask.count_nonzero()), int(free.count_nonzero()), rate)
        counts[name] = {"moved": n, "regrown": 0}
        if n == 0:
            continue
        grad = dense_grads.get(name)
        kept = drop_mask(drop, mask, weight, n, grad)
        generator = seeded_generator(*key, position, device=weight.device)
        scores = grow_scores(grow, weight, masks.fired[name], grad, optimizer, generator)
        candidates = ~kept if locked is None else ~kept & ~locked
        grown = indices_to_mask(top_n_indices(scores.masked_fill_(~candidates, -math.inf), n), mask.shape, mask.device)
        counts[name]["regrown"] = int((grown & mask).count_nonzero())  # dropped and grown back at once
        new_masks[name] = kept | grown
    return new_masks, counts
