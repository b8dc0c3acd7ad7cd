"""GDumb (Prabhu, Torr & Dokania 2020; Mammoth's ``gdumb``): a greedy class-balanced sampler
and a dumb learner.

- Sampler: the stream only fills a class-balanced buffer (``ReplayBuffer``'s ``class_balanced``
  policy: every class seen gets an equal share, a new class takes its slots from the largest
  ones). Within a class the buffer keeps a uniform sample of its stream, where the paper keeps
  the first examples; on a shuffled stream both are a uniform sample of the class.
- Learner: at the end of every task (Mammoth: only after the last one) the model is
  re-initialised and trained from scratch on the buffer alone for ``fitting_epochs`` epochs of
  ``minibatch_size`` examples: SGD from the run's optimizer at ``max_lr`` (a tenth of it for the
  first epoch), cosine annealing with warm restarts (T_0 = 1, T_mult = 2) down to ``min_lr``, and
  CutMix with ``cutmix_alpha`` (0: off), as the paper and Mammoth. Then the task is evaluated.

The stream takes no gradient step: each stream batch is still one (empty) optimizer step, so
steps, step checkpoints and the sparsity callback count stream batches as for every method.
Retraining runs on every rank from the identical buffer; rank 0's result is broadcast.
Sparsity: pruned weights are re-zeroed after re-initialisation and kept at zero by the engine's
masks through the retraining, which changes no mask (``sparsity_masks = "fixed"``: dense or a
static rule; ``rescale_init`` is not applied again). The retraining's FLOPs are counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparseforge.methods.base import METHODS
from sparseforge.methods.replay import BufferPolicy, ReplayMethod
from sparseforge.options import check
from sparseforge.utils.distributed import broadcast_


def cutmix(x: torch.Tensor, y: torch.Tensor, alpha: float):
    """CutMix (Yun et al. 2019): paste a random box of a shuffled copy of the batch into it.
    Returns the mixed images, both label sets and the share of the image the first set keeps.
    Draws from the global RNG, like the augmentations (checkpointed, so a resume replays it)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(x), device=x.device)
    h, w = x.shape[-2:]
    cut = (1 - lam) ** 0.5
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))
    top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    left, right = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    mixed = x.clone()
    mixed[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
    kept = 1 - (bottom - top) * (right - left) / (h * w)
    return mixed, y, y[perm], kept


@METHODS.register("gdumb")
class GDumb(ReplayMethod):
    sparsity_masks = "fixed"

    @dataclass
    class Options(ReplayMethod.Options):
        buffer_policy: BufferPolicy = BufferPolicy.class_balanced
        #: Epochs of training from scratch on the buffer at each task's end (Mammoth's default 256).
        fitting_epochs: int = 256
        #: Learning rate of the retraining's warm restarts, from max_lr down to min_lr.
        max_lr: float = 0.05
        min_lr: float = 0.0005
        #: CutMix's Beta(alpha, alpha) parameter; 0 turns CutMix off.
        cutmix_alpha: float = 1.0

        def __post_init__(self) -> None:
            super().__post_init__()
            check("method.fitting_epochs", self.fitting_epochs >= 1, f"must be >= 1, got {self.fitting_epochs}")
            check("method.min_lr", 0 <= self.min_lr <= self.max_lr, f"must be in [0, max_lr], got {self.min_lr}")
            check("method.cutmix_alpha", self.cutmix_alpha >= 0, f"must be >= 0, got {self.cutmix_alpha}")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False  # the stream only fills the buffer

    def training_step(self, batch, batch_idx: int):
        self.remember(batch)
        self.optimizers().step()  # no gradients: moves nothing, counts the stream batch as a step

    def end_task(self, task) -> None:
        super().end_task(task)
        self.retrain(task.id)

    def retrain(self, task_id: int) -> None:
        """Re-initialise the model and fit it on the buffer alone (see the module docstring)."""
        o = self.options
        for module in self.model.modules():
            if module is not self.model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        masks = self.sparsifier.masks if self.sparsifier is not None else None
        flops = self.sparsifier.flops if self.sparsifier is not None else None
        if masks is not None:
            masks.apply_()
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params, lr=o.max_lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=1, T_mult=2, eta_min=o.min_lr)
        slots = torch.nonzero(self.buffer.valid).flatten()
        stored = self.buffer.get(slots)
        g = torch.Generator().manual_seed(o.seed * 1_000_003 + task_id)
        was_training = self.model.training
        self.model.train()
        for epoch in range(o.fitting_epochs):
            if epoch < 2:  # a warm-up epoch at a tenth of the rate, as Mammoth
                for group in optimizer.param_groups:
                    group["lr"] = o.max_lr * (0.1 if epoch == 0 else 1.0)
            else:
                schedule.step()
            for chunk in torch.randperm(len(slots), generator=g).to(stored.y.device).split(o.minibatch_size):
                self._fit_step(optimizer, stored.raw[chunk], stored.y[chunk], stored.task[chunk], masks)
                if flops is not None:
                    flops.step(self.sparsifier.layer_densities())
        self.model.train(was_training)
        self.model.zero_grad(set_to_none=True)  # the stream's empty steps must stay empty
        broadcast_([*self.model.parameters(), *self.model.buffers()])

    def _fit_step(self, optimizer, raw: torch.Tensor, y: torch.Tensor, task: torch.Tensor, masks) -> None:
        x = self.datamodule.augment(raw, task)  # each example through its own task's view (domain-IL)
        optimizer.zero_grad()
        alpha = self.options.cutmix_alpha
        if alpha > 0:
            x, y_a, y_b, kept = cutmix(x, y, alpha)
            logits = self(x)
            loss = kept * F.cross_entropy(logits, y_a) + (1 - kept) * F.cross_entropy(logits, y_b)
        else:
            loss = F.cross_entropy(self(x), y)
        loss.backward()
        if masks is not None:
            masks.before_step()
        optimizer.step()
        if masks is not None:
            masks.after_step()
