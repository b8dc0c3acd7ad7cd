"""DER++ (Buzzega et al. 2020): DER plus ``beta`` times the cross-entropy on a second,
independent buffer draw with its stored labels: ``CE + alpha * MSE + beta * CE_buffer``."""

import torch.nn.functional as F

from sparseforge.methods.der import DER


class DERPP(DER):
    name = "derpp"

    def __init__(self, *args, beta: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta = float(beta)

    def replay_loss(self):
        loss = super().replay_loss()
        replayed = self.replay()
        if replayed is None:
            return loss
        return loss + self.beta * F.cross_entropy(self(replayed.x), replayed.y)
