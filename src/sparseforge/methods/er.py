"""Experience Replay (Chaudhry et al. 2019; Mammoth's ``er``): the current batch and a buffer
draw are concatenated into one cross-entropy batch; the buffer is filled by reservoir sampling."""

import torch
import torch.nn.functional as F

from sparseforge.methods.base import METHODS
from sparseforge.methods.replay import ReplayMethod


@METHODS.register("er")
class ER(ReplayMethod):
    def observe(self, batch):
        x, y = batch.x, batch.y
        replayed = self.replay()
        if replayed is not None:
            x, y = torch.cat([x, replayed.x]), torch.cat([y, replayed.y])
        logits = self(x)
        current = logits[: len(batch.y)]
        self.track_accuracy(current, batch.y)
        self.remember(batch)
        masked = self.current_ce_logits(current)
        if masked is not current:  # current_ce_classes="task" masks the current rows; replayed rows stay whole
            logits = torch.cat([masked, logits[len(batch.y) :]])
        return F.cross_entropy(logits, y)
