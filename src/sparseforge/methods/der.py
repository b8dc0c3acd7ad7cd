"""Dark Experience Replay (Buzzega et al. 2020): the buffer keeps the logits the model gave each
example when it was stored (training mode, augmented input, as Mammoth), and an MSE term pulls
today's logits on a re-augmented buffer draw towards them: ``CE + alpha * MSE``."""

import torch.nn.functional as F

from sparseforge.methods.replay import ReplayMethod


class DER(ReplayMethod):
    name = "der"
    store_logits = True

    def __init__(self, *args, alpha: float = 0.3, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha = float(alpha)

    def observe(self, batch):
        logits = self(batch.x)
        self.track_accuracy(logits, batch.y)
        loss = F.cross_entropy(self.current_task_logits(logits), batch.y) + self.replay_loss()
        self.remember(batch, logits)
        return loss

    def replay_loss(self):
        replayed = self.replay()
        if replayed is None:
            return 0.0
        return self.alpha * F.mse_loss(self(replayed.x), replayed.logits)
