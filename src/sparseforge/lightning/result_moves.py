"""``self.log`` without a device move when the logged value is already where its result lives.

Every ``self.log`` call moves the value's stored result to the value's device
(``_ResultMetric.to``), by walking the whole ``__dict__`` of that torchmetrics ``Metric``:
its states, but also every hook dictionary and module registry it inherits from ``nn.Module``.
That walk was most of what a ``self.log`` call cost: about half a millisecond on a CPU, as much
as a batch-10 MLP step. When the result's state tensors are already on that device there is nothing
to move, and :func:`install_result_move_skip` makes the call return at once; any other move runs
Lightning's own code.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultMetric

_LIGHTNINGS_MOVE = _ResultMetric.to


def _states_on(result: _ResultMetric, device: torch.device) -> bool:
    """Whether ``result`` holds tensor states (value, and the batch-size sum of a mean) and every
    one of them is on ``device``."""
    states = [result.__dict__.get(name) for name in ("value", "cumulated_batch_size")]
    tensors = [s for s in states if isinstance(s, torch.Tensor)]
    return bool(tensors) and all(t.device == device for t in tensors)


def _move_unless_there(self: _ResultMetric, *args: Any, **kwargs: Any) -> _ResultMetric:
    if len(args) == 1 and not kwargs and isinstance(args[0], torch.device) and self.is_tensor:
        if _states_on(self, args[0]):
            return self
    return _LIGHTNINGS_MOVE(self, *args, **kwargs)


def install_result_move_skip() -> None:
    """Route ``_ResultMetric.to`` through :func:`_move_unless_there` (idempotent)."""
    _ResultMetric.to = _move_unless_there
