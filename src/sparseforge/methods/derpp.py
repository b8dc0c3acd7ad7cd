"""DER++ (Buzzega et al. 2020): DER plus ``beta`` times the cross-entropy on a second,
independent buffer draw with its stored labels: ``CE + alpha * MSE + beta * CE_buffer``."""

from dataclasses import dataclass

import torch.nn.functional as F

from sparseforge.methods.base import METHODS
from sparseforge.methods.der import DER


@METHODS.register("derpp")
class DERPP(DER):
    @dataclass
    class Options(DER.Options):
        #: Mammoth's seq-CIFAR-10 values for buffer 500.
        alpha: float = 0.2
        #: Weight of the cross-entropy on a second buffer draw with its stored labels.
        beta: float = 0.5

    def replay_draws(self) -> list:
        return super().replay_draws() + super().replay_draws()  # the logit draw, the label draw

    def replay_loss(self, draws, logits):
        (for_logits, for_labels), (out_logits, out_labels) = draws, logits
        mse = F.mse_loss(out_logits, for_logits.logits)
        return self.options.alpha * mse + self.options.beta * F.cross_entropy(out_labels, for_labels.y)
