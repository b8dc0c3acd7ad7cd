"""When topology updates happen and how many weights each one moves (RigL's schedule).

Steps are optimizer steps counted from the start of the schedule (the run, or the task with
``schedule_scope=task``). An update happens after step ``t`` when ``t`` is a positive multiple of
``delta_t`` and ``t < end_fraction * horizon``. The drop fraction at step ``t`` is

- constant: ``α``;
- cosine (RigL's default): ``f + (α - f)/2 · (1 + cos(π t / T_end))``;
- linear: ``f + (α - f) · (1 - t / T_end)``;

with ``T_end = end_fraction * horizon`` and the floor ``f`` (0 for RigL; CL-with-DST anneals
its drop rate from 0.5 down to 0.005, the ``eta_min`` of its cosine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class DropSchedule:
    """Built from ``SparsityOptions`` (where the defaults live)."""

    delta_t: int
    drop_fraction: float
    kind: str
    end_fraction: float
    floor: float = 0.0

    def end_step(self, horizon: int) -> float:
        return self.end_fraction * horizon

    def is_update_step(self, t: int, horizon: int | None) -> bool:
        if horizon is None or t <= 0 or t % self.delta_t:
            return False
        return t < self.end_step(horizon)

    def fraction_at(self, t: int, horizon: int) -> float:
        progress = min(t / max(self.end_step(horizon), 1e-12), 1.0)
        if self.kind == "constant":
            return self.drop_fraction
        span = self.drop_fraction - self.floor
        if self.kind == "cosine":
            return self.floor + span / 2 * (1 + math.cos(math.pi * progress))
        if self.kind == "linear":
            return self.floor + span * (1 - progress)
        raise ValueError(f"unknown drop schedule {self.kind!r}")

    def update_steps(self, horizon: int) -> list[int]:
        """Every step after which an update happens, for a schedule of ``horizon`` steps."""
        return [t for t in range(self.delta_t, horizon + 1, self.delta_t) if self.is_update_step(t, horizon)]
