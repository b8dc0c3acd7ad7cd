"""ER-ACE (Caccia et al., ICLR 2022; Mammoth's ``er_ace``): experience replay with an asymmetric
cross-entropy. From the second task on, the current batch's cross-entropy sees only the classes
present in the batch and the classes not seen yet, so learning new classes no longer pushes down
the logits of the old ones; the buffer draw gets its own cross-entropy over every class.

Mammoth takes "not seen yet" to be the ids at or above the largest id seen, which assumes the
classes arrive in the order 0, 1, 2, ... Here the class order can be any permutation, so the
method keeps the set of seen classes itself. With Mammoth's order the two agree, except that
Mammoth also leaves the largest seen class unmasked in a batch that lacks it. The authors' code
(pclucas14/AML) runs task-free: it masks from the first step and replays as soon as the buffer
holds examples; Mammoth, followed here, starts both at the second task. In a task-free stream
(``scenario.online=true``) there is no second task to wait for, so both start as the authors' do.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from sparseforge.methods.base import METHODS
from sparseforge.methods.replay import ReplayMethod
from sparseforge.utils.distributed import world_size


@METHODS.register("er_ace")
class ERACE(ReplayMethod):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen_classes: torch.Tensor | None = None  # one bool per class, made on the first batch

    def observe(self, batch):
        if self.task_boundaries_hidden:  # task-free, as the authors' code: from the first stored example
            replaying = not self.buffer.is_empty
        else:  # as Mammoth: neither masking nor replay on the first task
            replaying = self.current_task > 0
        replayed = self.replay() if replaying else None
        logits, *replayed_logits = self.forward_batches(batch.x, *([replayed.x] if replaying else []))
        self.track_accuracy(logits, batch.y)
        present = self.see(batch.y, num_classes=logits.shape[1])
        if not replaying:
            loss = F.cross_entropy(logits, batch.y)
        else:
            asymmetric = logits.masked_fill(~(present | ~self.seen_classes), float("-inf"))
            loss = F.cross_entropy(asymmetric, batch.y) + F.cross_entropy(replayed_logits[0], replayed.y)
        self.remember(batch)
        return loss

    def see(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The classes present in this rank's batch; marks the classes of every rank's batch seen,
        so that the seen set (and so the checkpoint, written by rank 0) is the same on every rank."""
        present = torch.zeros(num_classes, dtype=torch.bool, device=y.device)
        present[y] = True
        if self.seen_classes is None:
            self.seen_classes = torch.zeros_like(present)
        everywhere = present
        if world_size() > 1:
            everywhere = present.to(torch.uint8)
            dist.all_reduce(everywhere, op=dist.ReduceOp.MAX)
        self.seen_classes = self.seen_classes.to(y.device) | everywhere.bool()
        return present

    def method_state(self) -> dict[str, Any]:
        return {**super().method_state(), "seen_classes": self.seen_classes}

    def load_method_state(self, state: dict[str, Any]) -> None:
        super().load_method_state(state)
        self.seen_classes = state.get("seen_classes")
