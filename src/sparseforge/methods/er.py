"""Experience Replay (Chaudhry et al. 2019; Mammoth's ``er``): the current batch and a buffer
draw are concatenated into one cross-entropy batch; the buffer is filled by reservoir sampling."""

import torch
import torch.nn.functional as F

from sparseforge.methods.replay import ReplayMethod


class ER(ReplayMethod):
    name = "er"

    def observe(self, batch):
        x, y = batch.x, batch.y
        replayed = self.replay()
        if replayed is not None:
            x, y = torch.cat([x, replayed.x]), torch.cat([y, replayed.y])
        logits = self(x)
        n = len(batch.y)
        self.track_accuracy(logits[:n], batch.y)
        self.remember(batch)
        return F.cross_entropy(torch.cat([self.current_task_logits(logits[:n]), logits[n:]]), y)
