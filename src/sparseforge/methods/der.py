"""Dark Experience Replay (Buzzega et al. 2020): the buffer keeps the logits the model gave each
example when it was stored (training mode, augmented input, as Mammoth), and an MSE term pulls
today's logits on a re-augmented buffer draw towards them: ``CE + alpha * MSE``."""

from dataclasses import dataclass

import torch.nn.functional as F

from sparseforge.methods.base import METHODS
from sparseforge.methods.replay import ReplayMethod


@METHODS.register("der")
class DER(ReplayMethod):
    store_logits = True

    @dataclass
    class Options(ReplayMethod.Options):
        #: Weight of the logit-matching MSE term (Mammoth's seq-CIFAR-10 value for buffer 500).
        alpha: float = 0.3

    def observe(self, batch):
        draws = self.replay_draws()
        logits, *replayed_logits = self.forward_batches(batch.x, *(d.x for d in draws))
        self.track_accuracy(logits, batch.y)
        loss = F.cross_entropy(self.current_ce_logits(logits), batch.y)
        if draws:
            loss = loss + self.replay_loss(draws, replayed_logits)
        self.remember(batch, logits)
        return loss

    def replay_draws(self) -> list:
        """The buffer draws of one step (one here), none while the buffer is empty."""
        replayed = self.replay()
        return [] if replayed is None else [replayed]

    def replay_loss(self, draws, logits):
        (draw,), (out,) = draws, logits
        return self.options.alpha * F.mse_loss(out, draw.logits)
