"""Dense forward FLOPs per layer, measured with ``torch.utils.flop_counter.FlopCounterMode``.

Convention: FLOPs = 2 x multiply-accumulates (what FlopCounterMode reports), for one example
(batch size 1). Sparse and training FLOPs are derived from these numbers; see the README.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def forward_flops_per_module(model: nn.Module, example: torch.Tensor) -> tuple[int, dict[str, int]]:
    """(total forward FLOPs of the model, FLOPs of each named submodule) for ``example`` (batch 1)."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    total = int(sum(counts.get("Global", {}).values()))
    per_module: dict[str, int] = {}
    for key, ops in counts.items():
        if key == "Global" or "." not in key:
            continue
        per_module[key.split(".", 1)[1]] = int(sum(ops.values()))
    return total, per_module


def layer_forward_flops(model: nn.Module, example: torch.Tensor, layer_names) -> dict[str, int]:
    """Dense forward FLOPs of each named layer, for one example."""
    _, per_module = forward_flops_per_module(model, example)
    return {name: per_module.get(name, 0) for name in layer_names}
