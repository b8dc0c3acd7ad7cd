"""The N:M weight of one layer: a ``torch.nn.utils.parametrize`` parametrization.

Why a parametrization: ``layer.weight`` becomes ``NMWeight(original)`` and is recomputed from the
dense fp32 weight (``parametrizations.weight.original``, the optimizer's parameter) on every
access, so the mask is recomputed on every forward pass with no change to the model's code (timm
ViTs, ResNets, MLPs alike), there is no mask to keep in sync with the weights, and the forward
and backward rules live in one autograd Function. Dense weights stay in the optimizer: under the
straight-through estimator pruned weights keep receiving gradients and can grow back.

The schedule position ``(clock, total)`` is kept in two buffers of this module, so it is part of
the model's ``state_dict`` (checkpoints, EMA copies, every DDP rank) and never threaded through
``forward`` arguments (the official code's silent-dense-fallback trap). A Python mirror of the
two buffers avoids a device sync per layer per forward; loading a state dict refreshes it.

Biases are not touched: they are separate parameters and stay dense and trainable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sparseforge.sparsity.nm.mask import nm_mask_and_factor
from sparseforge.sparsity.nm.schedule import NMSchedule, Phase


class _NMMaskedWeight(torch.autograd.Function):
    """Forward ``w * (keep + (1 - keep) * alpha)``; backward per the training mode.

    - straight-through (STE, SR-STE, SdGf, MdGf default): dL/dw = dL/dw~ for every weight;
    - ``exact_grad`` (MdGf autograd variant): dL/dw = dL/dw~ * (keep + (1 - keep) * alpha);
    - ``sr_lambda`` > 0 (SR-STE): + sr_lambda * (1 - keep) * w, added to the gradient itself (as
      the baseline does), so it goes through the optimizer, its moments and gradient clipping.
      Under fp16 loss scaling the incoming gradient is scaled by S and is unscaled before the
      step, so the term is multiplied by S here (``loss_scale()``) to stay lambda * w after it.

    ``factor`` is ``keep`` in the weight's dtype (cached with the mask by ``NMWeight``).
    """

    @staticmethod
    def forward(ctx, weight, keep, factor, alpha: float, sr_lambda: float, exact_grad: bool, loss_scale=None):
        scale = factor if alpha == 0.0 else torch.where(keep, 1.0, alpha).to(weight.dtype)
        ctx.sr_lambda, ctx.exact_grad, ctx.loss_scale = sr_lambda, exact_grad, loss_scale
        out = weight * scale
        # SR-STE's (1 - keep) * w is w - w * keep, and w * keep is this output when alpha is 0
        kept = (out if alpha == 0.0 else weight * factor) if sr_lambda else None
        ctx.save_for_backward(scale if exact_grad else None, kept, weight if sr_lambda else None)
        return out

    @staticmethod
    def backward(ctx, grad):
        scale, kept, weight = ctx.saved_tensors
        if ctx.exact_grad:
            grad = grad * scale
        if ctx.sr_lambda:
            if ctx.loss_scale is None:  # grad + lambda * (w - w * keep), in two passes
                grad = torch.add(grad, weight, alpha=ctx.sr_lambda).sub_(kept, alpha=ctx.sr_lambda)
            else:
                loss_scale = ctx.loss_scale()
                if loss_scale is None:
                    raise RuntimeError("SR-STE under fp16 loss scaling: the GradScaler has no scale yet")
                grad = grad + ctx.sr_lambda * (weight - kept) * loss_scale.to(weight.dtype)
        return grad, None, None, None, None, None, None


class NMWeight(nn.Module):
    """Parametrization: dense weight -> effective N:M weight for the current schedule phase.

    In training mode the phase is the scheduled one (dense warm-up, soft MdGf mask, SdGf stage).
    In eval mode the mask is always binary (alpha = 0): evaluation and export see a true N:M
    model, never the soft mask (the official code evaluates on whatever alpha training left).
    """

    def __init__(self, schedule: NMSchedule, group_dim: int = 1):
        super().__init__()
        self.schedule = schedule
        self.group_dim = int(group_dim)  # the groups of M run along this weight dimension (1: input)
        self.register_buffer("clock", torch.zeros((), dtype=torch.long))
        self.register_buffer("total", torch.zeros((), dtype=torch.long))
        self._position: tuple[int, int] | None = (0, 0)
        # () -> current fp16 loss scale (a tensor), set by the trainer glue under 16-mixed; not state
        self.loss_scale: Callable[[], torch.Tensor | None] | None = None
        # (key, keep, factor): the mask of the last weight seen (keep None until someone asks for
        # the bool form). The key holds the weight's version counter, which every in-place change
        # (optimizer step, load) bumps: evaluation and the micro-batches of an accumulated step
        # reuse the mask of the step that made the weight.
        self._mask_cache: tuple[tuple, torch.Tensor | None, torch.Tensor] | None = None

    # -- schedule position ----------------------------------------------------------------------
    def set_position(self, clock: int, total: int) -> None:
        self.clock.fill_(int(clock))
        self.total.fill_(int(total))
        self._position = (int(clock), int(total))

    def position(self) -> tuple[int, int]:
        if self._position is None:  # after load_state_dict: read the restored buffers once
            self._position = (int(self.clock), int(self.total))
        return self._position

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._position = None

    def phase(self, hard: bool | None = None) -> Phase:
        """The current phase; ``hard`` defaults to ``not self.training``."""
        hard = (not self.training) if hard is None else hard
        clock, total = self.position()
        if total <= 0:
            if self.training:
                raise RuntimeError(
                    "N:M schedule position was never set: call NMSparsifier.set_position(step, total) "
                    "before training (the Lightning NMSparsityCallback does it every batch)"
                )
            return self.schedule.final_phase()  # an untrained, unscheduled model is evaluated at its target N:M
        return self.schedule.phase(clock, total, hard=hard)

    # -- the parametrization --------------------------------------------------------------------
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        phase = self.phase()
        if phase.dense:
            return weight
        schedule = self.schedule
        if phase.alpha == 0.0:  # the binary mask: the bool copy is not needed
            keep, factor = None, self.factor(weight, phase.n, phase.m)
        else:
            keep, factor = self.mask(weight, phase.n, phase.m)
        sr_lambda = schedule.srste_lambda if schedule.mode == "srste" else 0.0
        exact_grad = schedule.mode == "mdgf" and schedule.decay_backward == "autograd"
        return _NMMaskedWeight.apply(weight, keep, factor, phase.alpha, sr_lambda, exact_grad, self.loss_scale)

    def mask(self, weight: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(bool mask, the mask in the weight's dtype), recomputed only when the weight changed."""
        factor = self.factor(weight, n, m)
        key, keep, _ = self._mask_cache
        if keep is None:  # computed in the weight's dtype: make the bool copy once, on demand
            keep = factor.bool()
            self._mask_cache = (key, keep, factor)
        return keep, factor

    def factor(self, weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
        """The mask in the weight's dtype (what the forward pass multiplies by), cached per weight
        version like :meth:`mask`."""
        key = (weight._version, weight.data_ptr(), n, m, weight.dtype, weight.device)
        cached = self._mask_cache
        if cached is None or cached[0] != key:
            keep, factor = nm_mask_and_factor(weight, n, m, self.group_dim)
            cached = self._mask_cache = (key, keep, factor)
        return cached[2]

    def mask_recomputations_key(self) -> tuple | None:
        """The key of the cached mask (tests and tools: did the mask get recomputed?)."""
        return None if self._mask_cache is None else self._mask_cache[0]

    def extra_repr(self) -> str:
        grouping = "" if self.group_dim == 1 else f", group_dim={self.group_dim}"
        return f"target={self.schedule.pattern}, mode={self.schedule.mode}{grouping}"
