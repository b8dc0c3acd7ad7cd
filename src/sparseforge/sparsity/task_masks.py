"""``TaskMaskStore``: one final mask per task over shared weights (parameter isolation).

After each task the store keeps

- the task's final mask (one bool tensor per sparse layer);
- the union of every stored mask: the weights earlier tasks own, frozen while later tasks train
  (they may reuse them, never move them);
- the merged weights: positions in the task's mask take the task's values, all others keep the
  earlier ones. Weights no task has used hold 0;
- the task's copy of everything outside the sparse weights (biases, normalisation parameters
  and buffers), so that those, shared while training, cannot make an earlier task forget;
- the task's capacity: the shares of the sparse weights it owns (new), reuses (owned by an earlier
  task), released (active at some point of the task, not kept, owned by no one) and that stay free.

``use_task(model, layers, task)`` is a context manager that puts the merged weights times the
task's mask (and the task's own dense state) into the model, and the working weights back after.
Plain PyTorch; masks travel as packed bits in ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8, 8 entries per byte (checkpoints: a mask per task adds up)."""
    flat = mask.detach().flatten().cpu()
    pad = (-flat.numel()) % 8
    flat = torch.cat([flat, flat.new_zeros(pad)]) if pad else flat
    return (flat.view(-1, 8).to(torch.uint8) * _BITS).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    n = 1
    for d in shape:
        n *= d
    bits = packed.unsqueeze(1).bitwise_and(_BITS).ne(0).flatten()
    return bits[:n].view(tuple(shape))


def dense_state(model: nn.Module, sparse_weights: Mapping[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer of ``model`` that is not one of ``sparse_weights``."""
    skip = {id(w) for w in sparse_weights.values()}
    named = [*model.named_parameters(), *model.named_buffers()]
    return {name: t.detach().clone() for name, t in named if id(t) not in skip}


@torch.no_grad()
def load_dense_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    tensors = dict([*model.named_parameters(), *model.named_buffers()])
    for name, value in state.items():
        tensors[name].copy_(value)


class TaskMaskStore:
    def __init__(self) -> None:
        self.task_ids: list[int] = []
        self.masks: dict[int, dict[str, torch.Tensor]] = {}
        self.dense: dict[int, dict[str, torch.Tensor]] = {}
        self.used: dict[str, torch.Tensor] = {}
        self.merged: dict[str, torch.Tensor] = {}
        self.capacity: list[dict[str, float]] = []

    def __contains__(self, task_id: int) -> bool:
        return task_id in self.masks

    def __len__(self) -> int:
        return len(self.task_ids)

    def used_share(self) -> float:
        """The share of the sparse weights that some task owns."""
        if not self.used:
            return 0.0
        return sum(int(u.count_nonzero()) for u in self.used.values()) / sum(u.numel() for u in self.used.values())

    @torch.no_grad()
    def add(
        self,
        task_id: int,
        masks: Mapping[str, torch.Tensor],
        weights: Mapping[str, torch.Tensor],
        dense: Mapping[str, torch.Tensor] | None = None,
        fired: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """Store a finished task: its mask, its weights merged in, its capacity (returned)."""
        if task_id in self.masks:
            raise ValueError(f"task {task_id} is already stored")
        total = sum(m.numel() for m in masks.values())
        counts = {"owned": 0, "reused": 0, "released": 0}
        for name, mask in masks.items():
            mask = mask.detach().to(torch.bool)
            earlier = self.used.get(name)
            if earlier is None:
                earlier = self.used[name] = torch.zeros_like(mask)
                self.merged[name] = torch.zeros_like(weights[name])
            counts["owned"] += int((mask & ~earlier).count_nonzero())
            counts["reused"] += int((mask & earlier).count_nonzero())
            if fired is not None:
                counts["released"] += int((fired[name] & ~mask & ~earlier).count_nonzero())
            self.merged[name] = torch.where(mask, weights[name].detach(), self.merged[name])
            earlier |= mask
        self.masks[task_id] = {name: m.detach().to(torch.bool).clone() for name, m in masks.items()}
        self.dense[task_id] = {name: t.detach().clone() for name, t in (dense or {}).items()}
        self.task_ids.append(task_id)
        entry = {"task": task_id, **{k: v / total for k, v in counts.items()}}
        entry["density"] = (counts["owned"] + counts["reused"]) / total
        entry["used_after"] = self.used_share()
        entry["free_after"] = 1.0 - entry["used_after"]
        self.capacity.append(entry)
        return entry

    @contextmanager
    def use_task(self, model: nn.Module, layers: Mapping[str, nn.Module], task_id: int) -> Iterator[None]:
        """``model`` with the merged weights times ``task_id``'s mask and that task's dense state."""
        working = {name: module.weight.detach().clone() for name, module in layers.items()}
        working_dense = dense_state(model, {name: module.weight for name, module in layers.items()})
        try:
            with torch.no_grad():
                for name, module in layers.items():
                    mask = self.masks[task_id][name]
                    module.weight.copy_(self.merged[name] * mask)
                load_dense_state(model, self.dense[task_id])
            yield
        finally:
            with torch.no_grad():
                for name, module in layers.items():
                    module.weight.copy_(working[name])
                load_dense_state(model, working_dense)

    def to(self, device: torch.device | str) -> TaskMaskStore:
        for per_layer in (self.used, self.merged, *self.masks.values(), *self.dense.values()):
            for name in per_layer:
                per_layer[name] = per_layer[name].to(device)
        return self

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        def cpu(d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {n: t.detach().cpu().clone() for n, t in d.items()}

        return {
            "task_ids": list(self.task_ids),
            "masks": {t: {n: pack_bits(m) for n, m in per.items()} for t, per in self.masks.items()},
            "dense": {t: cpu(per) for t, per in self.dense.items()},
            "merged": cpu(self.merged),
            "capacity": [dict(c) for c in self.capacity],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.task_ids = [int(t) for t in state["task_ids"]]
        self.merged = {n: t.clone() for n, t in state["merged"].items()}
        shapes = {n: t.shape for n, t in self.merged.items()}
        self.masks = {
            int(t): {n: unpack_bits(p, shapes[n]) for n, p in per.items()} for t, per in state["masks"].items()
        }
        self.dense = {int(t): {n: v.clone() for n, v in per.items()} for t, per in state["dense"].items()}
        self.capacity = [dict(c) for c in state["capacity"]]
        self.used = {n: torch.zeros(shape, dtype=torch.bool) for n, shape in shapes.items()}
        for per in self.masks.values():
            for name, mask in per.items():
                self.used[name] |= mask
