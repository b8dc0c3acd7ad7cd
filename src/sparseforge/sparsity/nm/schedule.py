"""What the N:M layers do at clock ``t`` of ``total``: pure functions, no state.

The clock is the global optimizer step (or the epoch, ``clock=epoch``) and ``total`` the length
of training in the same unit. Everything below is computed from ``(t, total)`` alone, so a
resumed run, an EMA copy or a second DDP rank that knows ``(t, total)`` is in the same phase.
(The official PGF code mutates N:M on the module when an epoch key is hit, which a resume loses.)

Timeline, for every mode: ``[0, d)`` dense warm-up (``d = floor(dense_fraction * total)``), then:

- ``ste``: binary target N:M mask, straight-through gradient.
- ``srste``: binary target N:M mask, gradient + lambda_w * (1 - mask) * w (SR-STE).
- ``mdgf`` (mask decay): pruned weights are scaled by alpha, which decays from 1 at ``d`` to
  exactly 0 at ``e = floor(mdgf.end_fraction * total)`` (linear, exponential, or ``staircase``:
  ``levels`` equal steps down, ours, with no counterpart upstream); binary from ``e`` on (the
  paper's fine-tune phase). Upstream's ``--decay-type STEP`` (``StepDecay``) is not a decay: it
  is the binary mask with a straight-through gradient, i.e. ``mode=ste``.
- ``sdgf`` (structure decay): binary masks whose N:M pattern changes in S equal stages over
  ``[d, total - f)`` (``f = floor(sdgf.finetune_fraction * total)``), stage s starting at
  ``d + floor(s * (total - f - d) / S)``; the last stage (the target N:M) runs on through the
  fine-tune. ``stepwise``: (M-1):M, M/2:M, M/4:M, ... N:M. ``geometric``: 8N:8M, 4N:4M, 2N:2M, N:M.
  ``densify``: N:8M, N:4M, N:2M, N:M (sparsest first, then denser: PGF's ``densify``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MODES = ("ste", "srste", "mdgf", "sdgf")
DECAYS = ("linear", "exponential", "staircase")
STRUCTURES = ("stepwise", "geometric", "densify")
BACKWARDS = ("ste", "autograd")


@dataclass(frozen=True)
class Phase:
    """What the masked layers do at one clock position."""

    dense: bool  # dense warm-up: the raw weights, no mask
    n: int
    m: int
    alpha: float  # factor on the pruned weights in the forward pass (0: binary mask)
    stage: int = 0  # SdGf stage index (0 for the other modes)

    @property
    def binary(self) -> bool:
        return not self.dense and self.alpha == 0.0

    @property
    def density(self) -> float:
        """Fraction of the layer's weights that are nonzero in the forward pass."""
        return 1.0 if self.dense or self.alpha > 0 else self.n / self.m

    @property
    def pattern(self) -> str:
        return "dense" if self.dense else f"{self.n}:{self.m}"


def fraction_to_clock(fraction: float, total: int) -> int:
    """floor(fraction * total), immune to float noise such as 0.7 * 10 = 7.000000000000001."""
    return int(math.floor(fraction * total + 1e-9))


def stepwise_stages(n: int, m: int) -> list[tuple[int, int]]:
    """SdGf-Stepwise: (M-1):M, then halve N (M/2:M, M/4:M, ...) down to the target N:M.

    For a power-of-two M/N this is the official chain (1:8 -> 7:8, 4:8, 2:8, 1:8, S =
    log2(M/N) + 1 stages). Other ratios end on the target instead of never reaching it (3:8 ->
    7:8, 4:8, 3:8), which fixes the official code's truncated stage count.
    """
    counts = [m - 1]
    k = m // 2
    while k > n:
        counts.append(k)
        k //= 2
    counts.append(n)
    unique = [c for i, c in enumerate(counts) if c not in counts[:i]]
    return [(c, m) for c in unique]


def geometric_stages(n: int, m: int) -> list[tuple[int, int]]:
    """SdGf-Geometric: 8N:8M, 4N:4M, 2N:2M, N:M (same density, groups shrink, so structure tightens)."""
    return [(n * k, m * k) for k in (8, 4, 2, 1)]


def densify_stages(n: int, m: int) -> list[tuple[int, int]]:
    """SdGf-Densify (PGF ``get_decay_config``, type ``densify``): N:8M, N:4M, N:2M, N:M, i.e. the
    density rises from N/8M to the target N/M over four equal frames."""
    return [(n, m * k) for k in (8, 4, 2, 1)]


def decayed_alpha(decay: str, u: float, rate: float, levels: int) -> float:
    """Mask-decay factor at position ``u`` in [0, 1] of the decay window: 1 at u <= 0, 0 at u >= 1."""
    if u <= 0.0:
        return 1.0
    if u >= 1.0:
        return 0.0
    if decay == "linear":
        return 1.0 - u
    if decay == "exponential":
        return math.exp(-rate * u)
    if decay == "staircase":
        return 1.0 - math.floor(u * levels) / levels
    raise ValueError(f"unknown decay {decay!r}")


@dataclass(frozen=True)
class NMSchedule:
    """The N:M recipe: target pattern, mode and the mode's options. Validated in ``__post_init__``.

    Bad values raise ``ValueError`` naming the option; the Lightning callback turns that into a
    one-line ConfigError under ``sparsity.``.
    """

    n: int = 2
    m: int = 4
    mode: str = "srste"
    dense_fraction: float = 0.0
    # SR-STE
    srste_lambda: float = 2e-4
    # MdGf
    decay: str = "exponential"
    decay_end_fraction: float = 1.0
    decay_rate: float = 10.0  # exponential: alpha = exp(-rate * u) over the window u in [0, 1)
    decay_coef_per_step: float | None = None  # the paper's kappa per clock unit, instead of rate
    decay_levels: int = 4  # staircase: alpha = 1 - floor(u * levels) / levels
    decay_backward: str = "ste"  # ste (official code): dL/dW = dL/dW~; autograd: scaled by the mask
    # SdGf
    structure: str = "stepwise"
    finetune_fraction: float = 0.0

    def __post_init__(self) -> None:
        def bad(key: str, problem: str) -> ValueError:
            return ValueError(f"{key}: {problem}")

        if not (isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.n < self.m):
            raise bad("n", f"N:M needs integers 0 < N < M, got {self.n}:{self.m}")
        if self.mode not in MODES:
            raise bad("mode", f"unknown mode {self.mode!r} (allowed: {', '.join(MODES)})")
        if not 0.0 <= self.dense_fraction < 1.0:
            raise bad("dense_fraction", f"must be in [0, 1), got {self.dense_fraction}")
        if self.srste_lambda < 0:
            raise bad("srste.lambda_w", f"must be >= 0, got {self.srste_lambda}")
        if self.decay not in DECAYS:
            raise bad("mdgf.decay", f"unknown decay {self.decay!r} (allowed: {', '.join(DECAYS)})")
        if not self.dense_fraction < self.decay_end_fraction <= 1.0:
            raise bad(
                "mdgf.end_fraction",
                f"must be in (dense_fraction={self.dense_fraction}, 1], got {self.decay_end_fraction}",
            )
        if self.decay_rate <= 0:
            raise bad("mdgf.rate", f"must be > 0, got {self.decay_rate}")
        if self.decay_coef_per_step is not None and self.decay_coef_per_step <= 0:
            raise bad("mdgf.coef_per_step", f"must be > 0 or null, got {self.decay_coef_per_step}")
        if self.decay_coef_per_step is not None and self.decay == "staircase":
            raise bad(
                "mdgf.coef_per_step", "applies to linear and exponential decay only; use mdgf.levels for staircase"
            )
        if self.decay_levels < 1:
            raise bad("mdgf.levels", f"must be >= 1, got {self.decay_levels}")
        if self.decay_backward not in BACKWARDS:
            raise bad("mdgf.backward", f"unknown backward {self.decay_backward!r} (allowed: {', '.join(BACKWARDS)})")
        if self.structure not in STRUCTURES:
            raise bad("sdgf.structure", f"unknown structure {self.structure!r} (allowed: {', '.join(STRUCTURES)})")
        if not 0.0 <= self.finetune_fraction < 1.0 - self.dense_fraction:
            raise bad(
                "sdgf.finetune_fraction",
                f"must be in [0, 1 - dense_fraction) = [0, {1.0 - self.dense_fraction}), got {self.finetune_fraction}",
            )

    # -- structure ------------------------------------------------------------------------------
    @property
    def stages(self) -> list[tuple[int, int]]:
        """The N:M patterns the run goes through after the dense warm-up (one for non-SdGf modes)."""
        if self.mode != "sdgf":
            return [(self.n, self.m)]
        if self.structure == "geometric":
            return geometric_stages(self.n, self.m)
        if self.structure == "densify":
            return densify_stages(self.n, self.m)
        return stepwise_stages(self.n, self.m)

    @property
    def largest_group(self) -> int:
        """The grouped dimension of every sparse layer must be divisible by this (8M for geometric/densify SdGf)."""
        return max(m for _, m in self.stages)

    @property
    def pattern(self) -> str:
        return f"{self.n}:{self.m}"

    # -- the clock ------------------------------------------------------------------------------
    def dense_end(self, total: int) -> int:
        return fraction_to_clock(self.dense_fraction, total)

    def decay_end(self, total: int) -> int:
        return max(fraction_to_clock(self.decay_end_fraction, total), self.dense_end(total))

    def stage_starts(self, total: int) -> list[int]:
        """Clock value at which each SdGf stage begins (the first one at the end of the warm-up)."""
        d = self.dense_end(total)
        f = fraction_to_clock(self.finetune_fraction, total)
        span = max(total - f - d, 0)
        count = len(self.stages)
        return [d + (s * span) // count for s in range(count)]

    def alpha(self, t: int, total: int) -> float:
        """MdGf factor on the pruned weights at clock ``t``: 1 up to the warm-up's end, exactly 0 from ``decay_end``."""
        d, e = self.dense_end(total), self.decay_end(total)
        if t >= e:
            return 0.0
        if t <= d:
            return 1.0
        if self.decay_coef_per_step is not None:  # the paper's parametrisation: kappa per step since sparse start
            elapsed = t - d
            if self.decay == "linear":
                return max(0.0, 1.0 - self.decay_coef_per_step * elapsed)
            if self.decay == "exponential":
                return math.exp(-self.decay_coef_per_step * elapsed)
        return decayed_alpha(self.decay, (t - d) / (e - d), self.decay_rate, self.decay_levels)

    def phase(self, t: int, total: int, hard: bool = False) -> Phase:
        """The phase at clock ``t``. ``hard``: evaluation/export view, the binary mask (alpha = 0)."""
        if total <= 0:
            raise ValueError(f"the schedule's total length must be > 0, got {total}")
        if t < self.dense_end(total):
            return Phase(dense=True, n=self.m, m=self.m, alpha=1.0)
        if self.mode == "sdgf":
            starts = self.stage_starts(total)
            stage = max(s for s, start in enumerate(starts) if start <= t)
            n, m = self.stages[stage]
            return Phase(dense=False, n=n, m=m, alpha=0.0, stage=stage)
        alpha = 0.0 if hard or self.mode != "mdgf" else self.alpha(t, total)
        return Phase(dense=False, n=self.n, m=self.m, alpha=alpha)

    def final_phase(self) -> Phase:
        """The phase at the end of training: the binary target N:M mask."""
        return Phase(dense=False, n=self.n, m=self.m, alpha=0.0, stage=len(self.stages) - 1)
