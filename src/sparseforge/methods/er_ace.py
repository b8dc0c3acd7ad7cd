"""ER-ACE (Caccia et al., ICLR 2022; Mammoth's ``er_ace``): experience replay with an asymmetric
cross-entropy. The current batch's cross-entropy sees only the classes present in the batch and
the classes not seen yet, so learning new classes no longer pushes down the logits of the old
ones; the buffer draw gets its own cross-entropy over every class.

Defaults follow current Mammoth (``models/er_ace.py``, since its 2024-12 version), which is also
the original work's code in these two points:

- ``cosine_classifier``: the model's last linear layer is replaced by a bias-free cosine
  classifier with scale 10 (``CosineLinear``, Mammoth's ``CustomLinear``); false: the linear head
  (the older Mammoth);
- ``task_free``: false (Mammoth's default) masks and replays from the second task on; true (the
  authors' code, pclucas14/AML) masks from the first step and replays as soon as the buffer holds
  examples.

Mammoth takes "not seen yet" to be the ids at or above the largest id seen, which assumes the
classes arrive in the order 0, 1, 2, ... Here the class order can be any permutation, so the
method keeps the set of seen classes itself. With Mammoth's order the two agree, except that
Mammoth also leaves the largest seen class unmasked in a batch that lacks it. The authors' code
(pclucas14/AML) runs task-free: it masks from the first step and replays as soon as the buffer
holds examples; Mammoth, followed by default, starts both at the second task. ``task_free=true``,
or a task-free stream (``scenario.online=true``, with no second task to wait for), starts both as
the authors' code does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from sparseforge.errors import ConfigError
from sparseforge.methods.base import METHODS
from sparseforge.methods.replay import ReplayMethod
from sparseforge.models.heads import with_cosine_classifier
from sparseforge.options import check
from sparseforge.utils.distributed import world_size


@METHODS.register("er_ace")
class ERACE(ReplayMethod):
    @dataclass
    class Options(ReplayMethod.Options):
        #: Replace the model's classifier by a bias-free cosine classifier (Mammoth's default).
        cosine_classifier: bool = True
        #: The cosine classifier's scale (Mammoth's CustomLinear.scale_factor).
        cosine_scale: float = 10.0
        #: Mask and replay from the first step (true) or from the second task on (Mammoth's default).
        task_free: bool = False

        def __post_init__(self) -> None:
            super().__post_init__()
            check("method.cosine_scale", self.cosine_scale > 0, f"must be > 0, got {self.cosine_scale}")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.options.cosine_classifier:
            model = with_cosine_classifier(self.model, self.options.cosine_scale)
            if model is None:
                raise ConfigError("method.cosine_classifier", "the model has no linear classifier to replace", "false")
            self.model = model
        self.seen_classes: torch.Tensor | None = None  # one bool per class, made on the first batch

    def observe(self, batch):
        masking = self.current_task > 0 or self.options.task_free or self.task_boundaries_hidden
        replayed = self.replay() if masking else None  # None while the buffer is empty
        logits, *replayed_logits = self.forward_batches(batch.x, *([replayed.x] if replayed is not None else []))
        self.track_accuracy(logits, batch.y)
        present = self.see(batch.y, num_classes=logits.shape[1])
        if masking:
            logits = logits.masked_fill(~(present | ~self.seen_classes), float("-inf"))
        loss = F.cross_entropy(logits, batch.y)
        if replayed is not None:
            loss = loss + F.cross_entropy(replayed_logits[0], replayed.y)
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
