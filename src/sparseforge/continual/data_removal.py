"""SparCL's dynamic data removal (DDR): drop the current task's least-forgotten examples.

Statistics (Toneva et al. 2019, as in the SparCL release): for every training example of the
current task, the outcome (correct or not: argmax over *all* classes of the training-mode output
on its augmented view) at each presentation since the last reset. A *forgetting event* is a
correct presentation followed by an incorrect one. An example's score is its number of
forgetting events; an example never classified correctly since the reset (or not presented at
all) gets the maximum score, so it is the last to go.

At each of ``removal_epochs`` (epochs within the task; the release: 5, 10, 15, 20) the examples
with the lowest scores are removed from the task's training set for the rest of the task: in
total ``round(remove_fraction · task size)`` (the release: 30%), split into equal steps (the
k-th of K events removes ``floor((k+1)·total/K) - floor(k·total/K)``, so the total is exact).
Ties, which are the rule (most examples have no forgetting event in a 5-presentation window),
are broken by a random order seeded by (seed, task, epoch): deterministic, identical on every
DDP rank, and the same again on resume. Statistics are reset after every removal and at the
start of every task, so each ranking sees only the presentations since the previous one.

Only the current task's training set shrinks; a replay buffer is never pruned (examples already
in it stay; removed ones just stop being offered to it).

Plain PyTorch: the method calls ``indices`` from its ``training_indices`` hook (once per epoch,
idempotent) and ``record`` with each training batch's outcome.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sparseforge.errors import ConfigError
from sparseforge.utils.seeding import seeded_generator

#: Score of an example never classified correctly since the last reset (ranks above any count).
NEVER_LEARNED = torch.iinfo(torch.int32).max


class DataRemoval:
    def __init__(
        self,
        removal_epochs: Sequence[int],
        remove_fraction: float,
        seed: int = 0,
        config_prefix: str = "method.ddr",
    ):
        epochs = [int(e) for e in removal_epochs]
        if not epochs or any(e < 1 for e in epochs) or epochs != sorted(set(epochs)):
            raise ConfigError(
                f"{config_prefix}.removal_epochs",
                f"must be strictly increasing epochs >= 1 (epoch 0 has no statistics yet), got {epochs}",
                "e.g. [5, 10, 15, 20]",
            )
        if (
            isinstance(remove_fraction, bool)
            or not isinstance(remove_fraction, (int, float))
            or not (0.0 <= remove_fraction < 1.0)
        ):
            raise ConfigError(f"{config_prefix}.remove_fraction", f"must be in [0, 1), got {remove_fraction!r}")
        self.removal_epochs = epochs
        self.remove_fraction = float(remove_fraction)
        self.seed = int(seed)
        self.task: int | None = None
        self.task_size = 0
        self.removed = torch.zeros(0, dtype=torch.long)  # removed example ids of the current task
        self.done_epochs: list[int] = []
        self.history: list[dict[str, int]] = []  # one row per removal event, every task
        # Per example of the training split, since the last reset.
        self.presented: torch.Tensor | None = None
        self.last_correct: torch.Tensor | None = None
        self.ever_correct: torch.Tensor | None = None
        self.forgetting: torch.Tensor | None = None

    # -- counts --------------------------------------------------------------------------------------
    def total_to_remove(self, task_size: int) -> int:
        return math.floor(self.remove_fraction * task_size + 0.5)

    def count_at(self, event: int, task_size: int) -> int:
        """Examples removed by the ``event``-th removal (0-based) of a task of ``task_size``."""
        total, k = self.total_to_remove(task_size), len(self.removal_epochs)
        return (event + 1) * total // k - event * total // k

    # -- statistics ----------------------------------------------------------------------------------
    def _allocate(self, n_examples: int, device: torch.device | str = "cpu") -> None:
        if self.presented is None or len(self.presented) != n_examples:
            self.presented = torch.zeros(n_examples, dtype=torch.int32, device=device)
            self.last_correct = torch.zeros(n_examples, dtype=torch.bool, device=device)
            self.ever_correct = torch.zeros(n_examples, dtype=torch.bool, device=device)
            self.forgetting = torch.zeros(n_examples, dtype=torch.int32, device=device)

    def reset_statistics(self) -> None:
        if self.presented is not None:
            for t in (self.presented, self.last_correct, self.ever_correct, self.forgetting):
                t.zero_()

    @torch.no_grad()
    def record(self, index: torch.Tensor, correct: torch.Tensor) -> None:
        """One presentation of examples ``index`` (ids in the training split) and their outcome."""
        if self.presented is None:
            raise RuntimeError("DataRemoval.record before indices(): no task has started")
        if self.presented.device != index.device:
            self.to(index.device)
        correct = correct.to(torch.bool)
        seen_before = self.presented[index] > 0
        self.forgetting[index] += (seen_before & self.last_correct[index] & ~correct).to(torch.int32)
        self.ever_correct[index] |= correct
        self.last_correct[index] = correct
        self.presented[index] += 1

    def scores(self, index: torch.Tensor) -> torch.Tensor:
        """Forgetting events of examples ``index`` since the last reset; NEVER_LEARNED if never correct."""
        index = index.to(self.presented.device)
        events = self.forgetting[index].clone()
        events[~self.ever_correct[index]] = NEVER_LEARNED
        return events

    # -- the training set of an epoch ----------------------------------------------------------------
    def indices(self, task_id: int, train_index: torch.Tensor, epoch_in_task: int, n_examples: int) -> torch.Tensor:
        """The examples of task ``task_id`` to train on at this epoch (removing some when due)."""
        if self.task != task_id:
            self.task, self.task_size = task_id, len(train_index)
            self.removed = torch.zeros(0, dtype=torch.long)
            self.done_epochs = []
            self._allocate(n_examples, self.presented.device if self.presented is not None else "cpu")
            self.reset_statistics()
        if epoch_in_task in self.removal_epochs and epoch_in_task not in self.done_epochs:
            self._remove(train_index, epoch_in_task)
        return self.remaining(train_index)

    def remaining(self, train_index: torch.Tensor) -> torch.Tensor:
        if not len(self.removed):
            return train_index
        return train_index[~torch.isin(train_index, self.removed.to(train_index.device))]

    def _remove(self, train_index: torch.Tensor, epoch_in_task: int) -> None:
        event = self.removal_epochs.index(epoch_in_task)
        count = self.count_at(event, self.task_size)
        candidates = self.remaining(train_index).cpu()
        scores = self.scores(candidates).cpu()
        order = torch.randperm(len(candidates), generator=seeded_generator(self.seed, self.task, epoch_in_task))
        order = order[torch.sort(scores[order], stable=True).indices]  # lowest score first, ties random
        chosen = candidates[order[:count]]
        self.removed = torch.cat([self.removed, chosen])
        self.done_epochs.append(epoch_in_task)
        self.history.append(
            {
                "task": int(self.task),
                "epoch": int(epoch_in_task),
                "removed": int(len(chosen)),
                "remaining": int(len(candidates) - len(chosen)),
                "removed_never_learned": int((scores[order[:count]] == NEVER_LEARNED).sum()),
            }
        )
        self.reset_statistics()

    # -- state ---------------------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> None:
        for name in ("presented", "last_correct", "ever_correct", "forgetting"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device))

    def state_dict(self) -> dict[str, Any]:
        stats = {
            name: getattr(self, name).detach().cpu().clone() if getattr(self, name) is not None else None
            for name in ("presented", "last_correct", "ever_correct", "forgetting")
        }
        return {
            "task": self.task,
            "task_size": self.task_size,
            "removed": self.removed.clone(),
            "done_epochs": list(self.done_epochs),
            "history": [dict(row) for row in self.history],
            **stats,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.task = state["task"]
        self.task_size = int(state["task_size"])
        self.removed = state["removed"].clone()
        self.done_epochs = [int(e) for e in state["done_epochs"]]
        self.history = [dict(row) for row in state["history"]]
        for name in ("presented", "last_correct", "ever_correct", "forgetting"):
            value = state.get(name)
            setattr(self, name, value.clone() if value is not None else None)
