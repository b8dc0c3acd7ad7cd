"""DER++ (Buzzega et al. 2020): DER plus ``beta`` times the cross-entropy on a second,
independent buffer draw with its stored labels: ``CE + alpha * MSE + beta * CE_buffer``."""

import torch.nn.functional as F

from sparseforge.methods.der import DER


class DERPP(DER):
    name = "derpp"

    def __init__(self, *args, beta: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta = float(beta)

    def replay_draws(self) -> list:
        return super().replay_draws() + super().replay_draws()  # the logit draw, the label draw

    def replay_loss(self, draws, logits):
        (for_logits, for_labels), (out_logits, out_labels) = draws, logits
        mse = F.mse_loss(out_logits, for_logits.logits)
        return self.alpha * mse + self.beta * F.cross_entropy(out_labels, for_labels.y)
