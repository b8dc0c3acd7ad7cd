"""The update-rule interface, and the drop-and-grow skeleton shared by SET, RigL and variants.

A rule decides which masks come next; the ``Sparsifier`` decides when (the schedule), captures
the dense gradient for rules that need it, applies the new masks through ``MaskSet.set_masks``
(zeroed new weights, reset optimizer state) and checks the counts.

Per update step the sparsifier calls, in this order:

1. ``observe(sparsifier, dense_grads)`` every optimizer step if ``observes_every_step``
   (before the gradients are masked);
2. ``prepare(sparsifier, drop_fraction, dense_grads)`` on update steps, before the optimizer
   step, with the dense (not yet masked) gradients;
3. ``propose(sparsifier, drop_fraction)`` after the optimizer step: the new masks, or ``None``.

A rule's settings live in its nested ``Options`` dataclass (extend the parent's); the sparsity
config group's schema is generated from it, so adding a rule with a setting is the rule's file,
its line in ``rules/__init__.py`` and its YAML.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from sparseforge.options import build_options
from sparseforge.registry import Registry
from sparseforge.sparsity.placement import indices_to_mask, top_n_indices, top_n_mask

#: name -> rule class (``sparsity.update_rule``).
RULES: Registry = Registry("update rule", "sparsity.update_rule")

GradDict = Mapping[str, torch.Tensor | None]


class UpdateRule:
    name: ClassVar[str] = "base"

    @dataclass
    class Options:
        pass

    #: Whether ``prepare`` needs the dense gradient (the sparsifier captures it on update steps).
    needs_dense_grad: ClassVar[bool] = False
    #: Whether ``observe`` must see the dense gradient of every step (momentum growth).
    observes_every_step: ClassVar[bool] = False
    #: Whether topology changes at all (static: no).
    changes_topology: ClassVar[bool] = True
    #: What triggers an update: "step" (every delta_t optimizer steps, the sparsifier's schedule)
    #: or "epoch" (``epoch_proposal`` at the start of each epoch of a task, e.g. SparCL's TDM).
    trigger: ClassVar[str] = "step"
    #: Attributes holding ``{layer name: tensor}`` that are the rule's state: they are saved
    #: (on the CPU), restored and moved with the rule, e.g. ``("ema",)``.
    tensor_state: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: Options | None = None, **values: Any):
        self.options = options if options is not None else build_options(self.Options, values, "sparsity")

    def observe(self, sparsifier, dense_grads: GradDict) -> None:
        pass

    def prepare(self, sparsifier, drop_fraction: float, dense_grads: GradDict) -> None:
        pass

    def propose(self, sparsifier, drop_fraction: float) -> dict[str, torch.Tensor] | None:
        return None

    def epoch_proposal(self, sparsifier, epoch_in_task: int):
        """Epoch-triggered rules: ``(new_masks, target_nnz, restart)`` at this epoch, or None."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {key: {n: t.detach().cpu().clone() for n, t in getattr(self, key).items()} for key in self.tensor_state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key in self.tensor_state:
            setattr(self, key, {n: t.clone() for n, t in state.get(key, {}).items()})

    def to(self, device: torch.device | str) -> None:
        """Move the tensor state to ``device``."""
        for key in self.tensor_state:
            setattr(self, key, {n: t.to(device) for n, t in getattr(self, key).items()})


def drop_smallest(masks, name: str, n: int) -> torch.Tensor:
    """The layer's mask without its ``n`` active weights of smallest |w| (exact count,
    deterministic ties).

    Ranked among the active weights only (a tenth of the layer at density 0.1), not over the
    whole layer with +inf for the inactive ones: the same selection for a fraction of the work.
    """
    mask = masks[name]
    active, values = masks.active_weights(name)
    dropped = active[top_n_indices(values.abs(), n, largest=False)]
    kept = mask.clone()
    kept.view(-1)[dropped] = False
    return kept


class DropAndGrow(UpdateRule):
    """Drop the ``floor(α·n_active)`` smallest |w| of each layer, grow as many by ``grow_scores``.

    Grow candidates: with ``regrow_dropped`` every weight inactive after the drop (RigL's
    Algorithm 1 and its ``_get_update_op``), so a weight dropped and regrown in the same update
    stays active and keeps its value and optimizer state (``MaskSet.set_masks`` only resets
    weights that were inactive before); without it, only the weights inactive before the update
    (then the grow choice is made in ``prepare`` and kept as indices, so no dense gradient has to
    survive the optimizer step). Counts per layer never change. Each rule sets its own default.
    """

    @dataclass
    class Options(UpdateRule.Options):
        #: Whether a weight dropped in an update may be regrown in the same update (it then keeps
        #: its value); false: only weights inactive before the update are grow candidates.
        regrow_dropped: bool = False

    def __init__(self, options: Options | None = None, **values: Any):
        super().__init__(options, **values)
        self._grown: dict[str, torch.Tensor] = {}
        self._scores: dict[str, torch.Tensor] = {}
        self._n_move: dict[str, int] = {}

    def grow_scores(self, sparsifier, name: str, position: int, dense_grad: torch.Tensor | None) -> torch.Tensor:
        """Higher = grown first. Only candidates' scores matter; they must be finite.

        Must return a new tensor: it is overwritten in place (no second weight-sized temporary).
        """
        raise NotImplementedError

    @staticmethod
    def n_to_move(mask: torch.Tensor, drop_fraction: float, regrow_dropped: bool) -> int:
        n_active = int(mask.count_nonzero())
        n = math.floor(drop_fraction * n_active)
        return n if regrow_dropped else min(n, mask.numel() - n_active)

    @torch.no_grad()
    def prepare(self, sparsifier, drop_fraction: float, dense_grads: GradDict) -> None:
        self._grown, self._scores, self._n_move = {}, {}, {}
        masks = sparsifier.masks
        for position, name in enumerate(masks):
            mask = masks[name]
            n = self.n_to_move(mask, drop_fraction, self.options.regrow_dropped)
            self._n_move[name] = n
            if n == 0:
                continue
            scores = self.grow_scores(sparsifier, name, position, dense_grads.get(name))
            if self.options.regrow_dropped:  # candidates depend on the drop: decide after the step
                self._scores[name] = scores
            else:  # keep only the chosen indices until the step is done
                self._grown[name] = top_n_indices(scores.masked_fill_(mask, -math.inf), n)
            del scores

    @torch.no_grad()
    def propose(self, sparsifier, drop_fraction: float) -> dict[str, torch.Tensor]:
        if not self._n_move:
            if self.needs_dense_grad:
                raise RuntimeError(
                    f"the {self.name} rule needs the dense gradient of the update step: call "
                    "Sparsifier.before_optimizer_step() on that step (or use Sparsifier.update_now(dense_grads=...))"
                )
            self.prepare(sparsifier, drop_fraction, {})
        masks = sparsifier.masks
        new_masks = {}
        for name in masks:
            n = self._n_move.get(name, 0)
            if n == 0:
                continue
            mask = masks[name]
            kept = drop_smallest(masks, name, n)
            if self.options.regrow_dropped:
                grown = top_n_mask(self._scores.pop(name).masked_fill_(kept, -math.inf), n)
            else:
                grown = indices_to_mask(self._grown.pop(name), mask.shape, mask.device)
            new_masks[name] = kept.logical_or_(grown)
        self._grown, self._scores, self._n_move = {}, {}, {}
        return new_masks
