"""The shared base of the distillation methods (LwF, iCaRL): a frozen copy of the model as it
was at the end of the previous task, and the class sets a distillation term needs.

The copy (``FrozenModel``) is not a submodule of the method: it is neither trained, nor wrapped
by DDP, nor seen by the sparsity engine or its FLOPs counter. It is taken after ``end_task`` on
every rank from identical weights, so it is the same everywhere, and it is saved as method state
(a resumed run distils from the same teacher). It keeps the weights the model had, pruned ones
included (zero), so a sparse student distils from its own sparse past.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from sparseforge.methods.base import ContinualMethod

_HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_backward_hooks", "_backward_pre_hooks")


class FrozenModel:
    """A frozen copy of a model: eval mode, no gradients, no hooks (FLOPs counters stay out)."""

    def __init__(self) -> None:
        self.module: nn.Module | None = None

    @property
    def ready(self) -> bool:
        return self.module is not None

    def capture(self, model: nn.Module) -> None:
        frozen = copy.deepcopy(model)
        for m in frozen.modules():
            for hooks in _HOOKS:
                getattr(m, hooks).clear()
        for p in frozen.parameters():
            p.grad = None
        self.module = frozen.eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if next(self.module.parameters()).device != x.device:
            self.module.to(x.device)
        return self.module(x)

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        if self.module is None:
            return None
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor] | None, like: nn.Module) -> None:
        """Restore a saved copy into a model shaped ``like`` (the live model)."""
        if state is None:
            self.module = None
            return
        self.capture(like)
        self.module.load_state_dict(state)


class DistillationMethod(ContinualMethod):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.previous = FrozenModel()
        self._class_masks: dict[tuple, torch.Tensor] = {}  # every step asks for the same few

    def end_task(self, task) -> None:
        super().end_task(task)
        self.previous.capture(self.model)

    def classes_of_tasks(self, first: int, stop: int, num_classes: int, device) -> torch.Tensor:
        """One bool per class: whether a task in ``[first, stop)`` trains on it."""
        key = (first, stop, num_classes, device)
        if key not in self._class_masks:
            mask = torch.zeros(num_classes, dtype=torch.bool)
            for task in self.tasks[first:stop]:
                mask[list(task.classes)] = True
            self._class_masks[key] = mask.to(device)
        return self._class_masks[key]

    def past_classes(self, num_classes: int, device) -> torch.Tensor:
        """The classes seen before the current task (what the frozen model knows)."""
        return self.classes_of_tasks(0, self.current_task, num_classes, device)

    def method_state(self) -> dict[str, Any]:
        return {**super().method_state(), "previous_model": self.previous.state_dict()}

    def load_method_state(self, state: dict[str, Any]) -> None:
        super().load_method_state(state)
        self.previous.load_state_dict(state.get("previous_model"), like=self.model)
