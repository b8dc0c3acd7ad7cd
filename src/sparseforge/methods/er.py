"""Experience Replay (Chaudhry et al. 2019; Mammoth's ``er``): the current batch and a buffer
draw are concatenated into one cross-entropy batch; the buffer is filled by reservoir sampling.
With soft targets (mixup) on the current batch, the replayed rows train towards their one-hot
labels."""

import torch
import torch.nn.functional as F

from sparseforge.methods.base import METHODS, training_target
from sparseforge.methods.replay import ReplayMethod


@METHODS.register("er")
class ER(ReplayMethod):
    supports_soft_targets = True

    def observe(self, batch):
        x, y = batch.x, training_target(batch)
        replayed = self.replay()
        if replayed is not None:
            x = torch.cat([x, replayed.x])
        logits = self(x)
        current = logits[: len(batch.y)]
        self.track_accuracy(current, batch.y)
        self.remember(batch)
        masked = self.current_ce_logits(current)
        if masked is not current:  # current_ce_classes="task" masks the current rows; replayed rows stay whole
            logits = torch.cat([masked, logits[len(batch.y) :]])
        if replayed is not None:
            stored = replayed.y if y.dim() == 1 else F.one_hot(replayed.y, logits.shape[1]).to(y.dtype)
            y = torch.cat([y, stored])
        return self.classification_loss(logits, y)
