"""The shared base of the quadratic regularisers (online EWC, SI).

The loss of a batch is the method's usual loss plus ``penalty_weight * sum_i importance_i *
(theta_i - anchor_i)^2`` over the model's trainable parameters. A subclass decides when and how
the per-parameter ``importance`` and the ``anchor`` (the parameters a later task is pulled
towards) are consolidated, typically at the end of a task.

The penalty enters the loss, so its gradient goes through autograd with the rest and the
sparsity engine masks it like any gradient (``on_before_optimizer_step`` of the sparsity
callback): a pruned weight stays at zero whatever its importance. Both tensors are method state
(checkpointed) and are computed from all-reduced gradients or identical parameters, so they are
the same on every DDP rank.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparseforge.methods.base import ContinualMethod

Tensors = dict[str, torch.Tensor]


class QuadraticRegulariser(ContinualMethod):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.importance: Tensors = {}  # empty until the first consolidation: no penalty
        self.anchor: Tensors = {}

    @property
    def penalty_weight(self) -> float:
        raise NotImplementedError

    def regularised_parameters(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def parameter_values(self) -> Tensors:
        """A detached copy of the current parameters (a new anchor)."""
        return {name: p.detach().clone() for name, p in self.regularised_parameters().items()}

    def penalty(self) -> torch.Tensor:
        """``sum_i importance_i * (theta_i - anchor_i)^2`` (without the weight)."""
        params = self.regularised_parameters()
        self._follow(next(iter(params.values())).device)
        return sum((self.importance[n] * (params[n] - self.anchor[n]).square()).sum() for n in self.importance)

    def penalty_gradient(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """The weighted penalty's gradient with respect to parameter ``name`` at ``value``."""
        return 2 * self.penalty_weight * self.importance[name] * (value - self.anchor[name])

    def observe(self, batch) -> torch.Tensor:
        loss = super().observe(batch)
        if self.importance:
            loss = loss + self.penalty_weight * self.penalty()
        return loss

    def _follow(self, device: torch.device) -> None:
        """Restored state arrives on the CPU: move it next to the parameters once."""
        for store in self.regulariser_state().values():
            for name, t in store.items():
                if t.device != device:
                    store[name] = t.to(device)

    # -- state --------------------------------------------------------------------------------------
    def method_state(self) -> dict[str, Any]:
        cpu = {k: {n: t.detach().cpu() for n, t in v.items()} for k, v in self.regulariser_state().items()}
        return {**super().method_state(), "regulariser": cpu}

    def regulariser_state(self) -> dict[str, Tensors]:
        return {"importance": self.importance, "anchor": self.anchor}

    def load_method_state(self, state: dict[str, Any]) -> None:
        super().load_method_state(state)
        for key, tensors in state.get("regulariser", {}).items():
            setattr(self, key, dict(tensors))
