"""SHARP's short-term memory (STM): 8-bit activations of the most recent episodes' classes.

Each class entry is one uint8 tensor plus one scalar min/max for the whole class (not per
feature): ``q = round(255 (a - lo) / (hi - lo))``, ``a ~ lo + q (hi - lo) / 255``, so the
round-trip error is at most ``(hi - lo) / 510`` per value. A class recurring in a later episode
overwrites its entry. Entries older than the last ``num_episodes`` episodes are evicted: only
recent classes are ever replayed.

For raw-input replay the codes are the uint8 images themselves (``lo, hi = 0, 255``), so the
same store and byte count serve both variants.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

#: bytes of per-class metadata (two float32 scalars: lo and hi)
_META_BYTES = 8


def quantise(a: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """One global min/max for the whole tensor; constant input maps to code 0."""
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return torch.zeros(a.shape, dtype=torch.uint8, device=a.device), lo, hi
    q = torch.round((a.float() - lo) * (255.0 / (hi - lo))).clamp_(0, 255)
    return q.to(torch.uint8), lo, hi


def dequantise(q: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return lo + q.float() * ((hi - lo) / 255.0)


class ShortTermMemory:
    """Per-class uint8 codes of the classes seen in the last ``num_episodes`` episodes."""

    def __init__(self, per_class: int, num_episodes: int = 1):
        if per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {per_class}")
        if num_episodes < 1:
            raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
        self.per_class = int(per_class)
        self.num_episodes = int(num_episodes)
        self.codes: dict[int, torch.Tensor] = {}
        self.ranges: dict[int, tuple[float, float]] = {}
        self.episode_of: dict[int, int] = {}

    # -- writing ----------------------------------------------------------------------------------
    def insert(self, episode: int, label: int, values: torch.Tensor, already_quantised: bool = False) -> None:
        """Store (overwrite) class ``label``; ``values`` holds its first ``per_class`` samples."""
        values = values[: self.per_class]
        if already_quantised:
            if values.dtype != torch.uint8:
                raise ValueError("already_quantised values must be uint8")
            codes, lo, hi = values, 0.0, 255.0
        else:
            codes, lo, hi = quantise(values)
        self.codes[int(label)] = codes.detach().cpu().contiguous()
        self.ranges[int(label)] = (lo, hi)
        self.episode_of[int(label)] = int(episode)

    def evict_before(self, episode: int) -> None:
        """Keep only classes stored at ``episode - num_episodes + 1`` or later."""
        oldest = episode - self.num_episodes + 1
        for label in [c for c, e in self.episode_of.items() if e < oldest]:
            del self.codes[label], self.ranges[label], self.episode_of[label]

    # -- reading ----------------------------------------------------------------------------------
    def classes_of(self, episode: int) -> list[int]:
        return sorted(c for c, e in self.episode_of.items() if e == episode)

    def replay_classes(self, current_episode: int) -> list[int]:
        """Classes of the ``num_episodes`` episodes before ``current_episode``."""
        first = current_episode - self.num_episodes
        return sorted(c for c, e in self.episode_of.items() if first <= e < current_episode)

    def decoded(self, label: int, device: torch.device | str = "cpu") -> torch.Tensor:
        lo, hi = self.ranges[label]
        return dequantise(self.codes[label].to(device), lo, hi)

    @property
    def samples(self) -> int:
        return sum(len(c) for c in self.codes.values())

    @property
    def nbytes(self) -> int:
        """Bytes held: the uint8 codes plus the per-class lo/hi scalars."""
        return sum(c.numel() * c.element_size() + _META_BYTES for c in self.codes.values())

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        labels = sorted(self.codes)
        return {
            "labels": labels,
            "codes": [self.codes[c] for c in labels],
            "ranges": [list(self.ranges[c]) for c in labels],
            "episodes": [self.episode_of[c] for c in labels],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.codes = {int(c): q.cpu() for c, q in zip(state["labels"], state["codes"], strict=True)}
        self.ranges = {
            int(c): (float(r[0]), float(r[1])) for c, r in zip(state["labels"], state["ranges"], strict=True)
        }
        self.episode_of = {int(c): int(e) for c, e in zip(state["labels"], state["episodes"], strict=True)}


class ReplayBank:
    """The replayed classes of one episode, dequantised once and kept on the training device
    (the authors' code dequantises on the CPU at every step)."""

    def __init__(self, memory: ShortTermMemory, classes: Sequence[int], device: torch.device | str, decode=None):
        decode = decode or (lambda label: memory.decoded(label, device))
        self.classes = list(classes)
        self.values = [decode(c) for c in self.classes]

    def __len__(self) -> int:
        return len(self.classes)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` samples spread evenly over the classes (the first ``batch_size % C``
        classes get one more); without replacement inside a class, with replacement once a
        class has fewer stored samples than it is asked for."""
        n_classes = len(self.classes)
        base, extra = divmod(batch_size, n_classes)
        xs, ys = [], []
        for k, (label, values) in enumerate(zip(self.classes, self.values, strict=True)):
            want, have = base + (k < extra), len(values)
            if want == 0:
                continue
            if want <= have:
                pick = torch.randperm(have, generator=generator)[:want]
            else:
                pick = torch.randint(0, have, (want,), generator=generator)
            xs.append(values[pick.to(values.device)])
            ys.append(torch.full((want,), label, dtype=torch.long, device=values.device))
        return torch.cat(xs), torch.cat(ys)
