"""Learning without Forgetting (Li & Hoiem 2017; Mammoth's ``lwf``).

The current batch's cross-entropy over the classes seen so far (those of later tasks are masked,
as in Mammoth), plus ``alpha`` times the distillation of the previous model's outputs on the
classes it knew: the cross-entropy between ``softmax(old / T)`` and ``softmax(new / T)`` over the
old classes, both computed on the same (augmented) batch. The previous model is the frozen copy
taken at the end of the last task (``DistillationMethod``).

Differences from Mammoth: Mammoth first warms up the classifier on the new classes for one pass
over the task before training (as the paper's optional warm-up step); there is no warm-up here.
Mammoth computes the old logits on non-augmented images (the same on MNIST, which has no
augmentation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparseforge.methods.base import METHODS
from sparseforge.methods.distillation import DistillationMethod
from sparseforge.options import check


def soft_cross_entropy(new_logits: torch.Tensor, old_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``-mean_b sum_c softmax(old / T)_c * log softmax(new / T)_c`` (Hinton et al.'s distillation)."""
    target = F.softmax(old_logits / temperature, dim=1)
    return -(target * F.log_softmax(new_logits / temperature, dim=1)).sum(1).mean()


@METHODS.register("lwf")
class LwF(DistillationMethod):
    @dataclass
    class Options(DistillationMethod.Options):
        #: Weight of the distillation term.
        alpha: float = 1.0
        #: Softmax temperature T of the distillation.
        temperature: float = 2.0

        def __post_init__(self) -> None:
            check("method.alpha", self.alpha >= 0, f"must be >= 0, got {self.alpha}")
            check("method.temperature", self.temperature > 0, f"must be > 0, got {self.temperature}")

    def observe(self, batch) -> torch.Tensor:
        logits = self(batch.x)
        self.track_accuracy(logits, batch.y)
        classes, device = logits.shape[1], logits.device
        seen = self.classes_of_tasks(0, self.current_task + 1, classes, device)
        loss = F.cross_entropy(logits.masked_fill(~seen, float("-inf")), batch.y)
        past = self.past_classes(classes, device)
        if self.previous.ready and bool(past.any()):
            old = self.previous(batch.x)
            loss = loss + self.options.alpha * soft_cross_entropy(
                logits[:, past], old[:, past], self.options.temperature
            )
        return loss
