"""Stop at the first NaN or infinite training loss, with one line, before it reaches the weights.

A run whose loss became NaN would otherwise train every remaining epoch on NaN weights and end
``completed`` with chance accuracy (or, sparse, with a misleading mask error). Set
``nonfinite_loss: allow`` to keep training anyway (for studying divergence); the summary then
records the first step whose loss was not finite and how many were not.

A callback rather than a check in the methods' ``training_step``: ``on_before_backward`` receives
the loss every method hands to backward, whatever the method (users' own ones included) and
before any gradient or optimizer step exists, so the last checkpoint holds no NaN. It costs one
device-to-host read of the loss per step, and under DDP a one-flag all-reduce so that every rank
stops at the same step.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning.pytorch as pl
import torch

from sparseforge.errors import ConfigError, TrainingDivergedError

log = logging.getLogger("sparseforge")

POLICIES = ("error", "allow")


class NonFiniteLossGuard(pl.Callback):
    def __init__(self, policy: str = "error"):
        if policy not in POLICIES:
            raise ConfigError("nonfinite_loss", f"unknown value {policy!r}", ", ".join(POLICIES))
        self.policy = policy
        self.first_step: int | None = None
        self.steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {"first_step": self.first_step, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first_step, self.steps = state.get("first_step"), int(state.get("steps", 0))

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        value = loss.detach()
        # one number (the usual loss): a host read, cheaper than isfinite/all/bool at small steps
        bad = not math.isfinite(value.item()) if value.numel() == 1 else not bool(torch.isfinite(value).all())
        if trainer.world_size > 1:
            bad = bool(trainer.strategy.reduce_boolean_decision(bad, all=False))
        if not bad:
            return
        step = trainer.global_step
        what = "nan" if torch.isnan(loss.detach()).any() else "inf"
        lr = _learning_rate(trainer)
        where = f"loss is {what} at step {step} (epoch {trainer.current_epoch}, lr {lr:g})"
        if self.policy == "error":
            raise TrainingDivergedError(
                f"{where}: training stopped before it reached the weights; lower optimizer.lr, "
                "or set nonfinite_loss=allow to keep training"
            )
        if self.first_step is None:
            self.first_step = step
            log.warning(f"{where}: training goes on (nonfinite_loss=allow)")
        self.steps += 1

    def summary_section(self, trainer: pl.Trainer) -> dict[str, Any]:
        if self.first_step is None:
            return {}
        return {"nonfinite_loss": {"policy": self.policy, "first_step": self.first_step, "steps": self.steps}}


def _learning_rate(trainer: pl.Trainer) -> float:
    """The learning rate in use (after schedulers) of the first parameter group."""
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            return float(group["lr"])
    return float("nan")
