"""A replay buffer in plain PyTorch: fixed memory, vectorised insertion and sampling.

It stores, per slot, the raw (non-augmented) uint8 input, the label, the task id and, for
DER/DER++, the logits. Storage is allocated once, at full capacity, on the device of the first
batch; every insertion and every draw is a handful of tensor operations over the batch, never a
Python loop over the buffer (Avalanche's replay slowdowns came from per-sample dataset plumbing;
the one Python loop left, in ``_write``, runs over the batch's own slots). Both run on every
training step, so they are kept to few ops (``experiments/cl_replay_overhead.py`` measures them).
All random decisions come from the buffer's own ``torch.Generator``, so the buffer is
reproducible on its own and its state (generator included) goes into checkpoints.

Policies:

- ``reservoir`` (default; Vitter's algorithm R, as in Mammoth): the ``i``-th example of the
  stream (0-based) fills slot ``i`` while ``i < capacity``; afterwards it draws ``j`` uniform in
  ``[0, i]`` and replaces slot ``j`` if ``j < capacity``. The buffer is then a uniform sample of
  the stream. A batch is processed in one go with the same result as one example at a time
  (when two examples of a batch draw the same slot, the later one wins).
- ``class_balanced``: every class seen so far gets an equal share of the slots (``capacity //
  k`` for ``k`` seen classes; the first ``capacity % k`` classes in order of appearance get one
  more), and each class keeps a reservoir sample of its own stream within its share. When a new
  class shrinks the shares, each class over its share drops random slots, which keeps its
  sample uniform. Insertion handles all the batch's classes in the same few ops (about 40,
  whether a batch holds 2 classes or 10).

Byte accounting is exact: ``bytes_per_sample`` counts every stored field of one slot, and
``nbytes`` is what the allocated storage occupies (``capacity * bytes_per_sample``).
``capacity_for_bytes`` turns a byte budget into a capacity, for comparisons at equal memory
(e.g. activation replay against an ER buffer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from sparseforge.errors import ConfigError

POLICIES = ("reservoir", "class_balanced")
LABEL_DTYPE = torch.int64  # labels and task ids are stored as the loss functions want them
LOGIT_DTYPE = torch.float32


class Replayed(NamedTuple):
    """A draw from the buffer: raw uint8 inputs plus what was stored with them."""

    raw: torch.Tensor
    y: torch.Tensor
    task: torch.Tensor
    logits: torch.Tensor | None
    slots: torch.Tensor  # which slots were drawn


def bytes_per_sample(input_shape: Sequence[int], num_logits: int = 0, input_dtype: torch.dtype = torch.uint8) -> int:
    """Bytes one slot occupies: the input, the label and task id, and the logits if stored."""
    input_bytes = math.prod(input_shape) * torch.empty((), dtype=input_dtype).element_size()
    label_bytes = 2 * torch.empty((), dtype=LABEL_DTYPE).element_size()
    logit_bytes = num_logits * torch.empty((), dtype=LOGIT_DTYPE).element_size()
    return input_bytes + label_bytes + logit_bytes


def capacity_for_bytes(budget: int, input_shape: Sequence[int], num_logits: int = 0) -> int:
    """The largest capacity whose storage fits in ``budget`` bytes."""
    return int(budget) // bytes_per_sample(input_shape, num_logits)


class ReplayBuffer:
    def __init__(self, capacity: int, policy: str = "reservoir", store_logits: bool = False, seed: int = 0):
        policy = getattr(policy, "value", policy)  # a schema Enum or its name
        if int(capacity) < 1:
            raise ConfigError("method.buffer_size", f"must be >= 1, got {capacity}")
        if policy not in POLICIES:
            raise ConfigError("method.buffer_policy", f"unknown policy {policy!r}", ", ".join(POLICIES))
        self.capacity = int(capacity)
        self.policy = policy
        self.store_logits = bool(store_logits)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.seen = 0  # examples offered so far
        # Bookkeeping on the CPU (cheap, no device syncs); data on the training device.
        self.valid = torch.zeros(self.capacity, dtype=torch.bool)
        self.slot_label = torch.full((self.capacity,), -1, dtype=torch.long)
        self.class_order = torch.zeros(0, dtype=torch.long)  # classes in order of first appearance
        self.seen_per_class = torch.zeros(0, dtype=torch.long)
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.task: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None

    # -- sizes ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.valid.sum())

    @property
    def is_empty(self) -> bool:
        # No policy ever empties a buffer that has seen an example (class-balanced shrinking only
        # drops slots above a class's share), so a Python int answers without a tensor op.
        return self.seen == 0

    @property
    def nbytes(self) -> int:
        """Bytes of the allocated storage (0 before the first insertion)."""
        return sum(t.numel() * t.element_size() for t in self._fields().values())

    def memory_report(self) -> dict[str, Any]:
        fields = {k: t.numel() * t.element_size() for k, t in self._fields().items()}
        return {
            "policy": self.policy,
            "capacity": self.capacity,
            "samples": len(self),
            "seen": self.seen,
            "bytes": sum(fields.values()),
            "bytes_per_sample": sum(fields.values()) // self.capacity if fields else 0,
            "bytes_by_field": fields,
        }

    def _fields(self) -> dict[str, torch.Tensor]:
        return {
            k: t
            for k, t in (("x", self.x), ("y", self.y), ("task", self.task), ("logits", self.logits))
            if t is not None
        }

    # -- insertion --------------------------------------------------------------------------------
    @torch.no_grad()
    def add(self, raw: torch.Tensor, y: torch.Tensor, task: torch.Tensor, logits: torch.Tensor | None = None) -> None:
        """Offer a batch to the buffer (raw uint8 inputs, labels, task ids, optional logits)."""
        if self.store_logits and logits is None:
            raise ValueError("this buffer stores logits: pass them to add()")
        if raw.dtype != torch.uint8:
            raise ValueError(f"the buffer stores raw uint8 inputs, got {raw.dtype}")
        self._allocate(raw, logits)
        y_cpu = y.detach().to("cpu", torch.long)
        if self.policy == "reservoir":
            slots = self._reservoir_slots(len(y_cpu))
        else:
            slots = self._class_balanced_slots(y_cpu).tolist()
        self.seen += len(y_cpu)
        self._write(slots, raw, y, task, logits, y_cpu)

    def _allocate(self, raw: torch.Tensor, logits: torch.Tensor | None) -> None:
        device = raw.device
        if self.x is None:
            self.x = torch.zeros((self.capacity, *raw.shape[1:]), dtype=torch.uint8, device=device)
            self.y = torch.zeros(self.capacity, dtype=LABEL_DTYPE, device=device)
            self.task = torch.zeros(self.capacity, dtype=LABEL_DTYPE, device=device)
        if self.store_logits and self.logits is None:
            self.logits = torch.zeros((self.capacity, *logits.shape[1:]), dtype=LOGIT_DTYPE, device=device)
        if self.x.device != device:  # restored from a checkpoint on the CPU
            for name, t in self._fields().items():
                setattr(self, name, t.to(device))

    def _reservoir_slots(self, n: int) -> list[int]:
        # Every step pays for this. The draw is made for every example (the generator advances the
        # same whether the buffer is filling or full); example i of the batch, the stream's
        # (seen + 1 + i)-th, draws slot floor(u * (seen + 1 + i)) (truncation is the floor: the
        # product is positive). For a batch, a few float multiplications in Python cost a third of
        # the tensor ops that compute the same IEEE double products.
        draws = torch.rand(n, generator=self.generator, dtype=torch.float64).tolist()
        seen, capacity = self.seen, self.capacity
        slots = [int(u * (seen + 1 + i)) for i, u in enumerate(draws)]
        if seen < capacity:  # filling: the first examples take the next free slots
            fill = min(n, capacity - seen)
            slots[:fill] = range(seen, seen + fill)
        return [slot if slot < capacity else -1 for slot in slots]

    def _class_balanced_slots(self, y: torch.Tensor) -> torch.Tensor:
        n = len(y)
        if not n:
            return torch.empty(0, dtype=torch.long)
        quota = self._admit_classes(y)
        # Each example's rank among the batch's examples of its class (0, 1, ... in batch order).
        by_label = torch.sort(y, stable=True)
        rank = torch.empty(n, dtype=torch.long)
        rank[by_label.indices] = torch.arange(n) - torch.searchsorted(by_label.values, by_label.values)
        in_batch = torch.bincount(y, minlength=len(quota))
        held = torch.bincount(self.slot_label[self.valid], minlength=len(quota))
        # A class below its share fills free slots with its first examples of the batch (there
        # are enough: every class is within its share, and the shares add up to the capacity).
        fills = (quota - held).clamp_(min=0)
        slots = torch.full((n,), -1, dtype=torch.long)
        filler = rank < fills[y]
        fillers = torch.nonzero(filler).flatten()
        if len(fillers):
            taken = torch.nonzero(~self.valid).flatten()[: len(fillers)]
            slots[fillers] = taken
            self.valid[taken] = True
            self.slot_label[taken] = y[fillers]
        # The others run a reservoir over their own class's stream: the example at position p of
        # class c draws j in [0, p] and replaces the j-th slot of c if j is below c's slot count.
        rest = torch.nonzero(~filler).flatten()
        if len(rest):
            c = y[rest]
            position = (self.seen_per_class[c] + rank[rest]).double()
            draw = torch.rand(len(rest), generator=self.generator, dtype=torch.float64).mul_(position + 1).long()
            hit = draw < (held + torch.minimum(fills, in_batch))[c]
            if bool(hit.any()):
                occupied = torch.nonzero(self.valid).flatten()
                grouped = torch.sort(self.slot_label[occupied], stable=True)  # by class, slots ascending
                first = torch.searchsorted(grouped.values, c[hit])
                slots[rest[hit]] = occupied[grouped.indices[first + draw[hit]]]
        self.seen_per_class += in_batch
        return slots

    def _admit_classes(self, y: torch.Tensor) -> torch.Tensor:
        """Register the batch's new classes and return every class's share of the slots. A new
        class shrinks the shares, and the classes over theirs drop random slots first."""
        if int(y.max()) < len(self.seen_per_class) and bool((self.seen_per_class[y] > 0).all()):
            return self._quotas()  # no new class, the common case: no unique, sort or shrink
        # The batch's classes in order of first appearance (that order assigns the extra slots).
        classes, inverse = torch.unique(y, return_inverse=True)
        first = torch.full((len(classes),), len(y), dtype=torch.long)
        first.scatter_reduce_(0, inverse, torch.arange(len(y)), reduce="amin")
        present = classes[first.argsort()]
        new = present[~torch.isin(present, self.class_order)]
        self.class_order = torch.cat([self.class_order, new])
        if int(self.class_order.max()) >= len(self.seen_per_class):
            grown = torch.zeros(int(self.class_order.max()) + 1, dtype=torch.long)
            grown[: len(self.seen_per_class)] = self.seen_per_class
            self.seen_per_class = grown
        quota = self._quotas()
        self._shrink_to(quota)
        return quota

    def _quotas(self) -> torch.Tensor:
        """Slots per class, indexed by label (0 for classes not seen yet)."""
        k = len(self.class_order)
        base, extra = divmod(self.capacity, k)
        quota = torch.zeros(len(self.seen_per_class), dtype=torch.long)
        quota[self.class_order] = base + (torch.arange(k) < extra).long()
        return quota

    def _shrink_to(self, quota: torch.Tensor) -> None:
        """Free random slots of every class stored above its quota."""
        occupied = torch.nonzero(self.valid).flatten()
        if not len(occupied):
            return
        labels = self.slot_label[occupied]
        limits = quota[labels]
        # Rank the slots of each class in a random order; drop those ranked at or past the quota.
        order = torch.randperm(len(occupied), generator=self.generator)
        order = order[torch.sort(labels[order], stable=True).indices]
        sorted_labels = labels[order]
        starts = torch.searchsorted(sorted_labels, sorted_labels, right=False)
        rank = torch.arange(len(order)) - starts
        drop = occupied[order[rank >= limits[order]]]
        self.valid[drop] = False
        self.slot_label[drop] = -1

    def _write(self, slots: list[int], raw, y, task, logits, y_cpu) -> None:
        # When several examples of the batch drew one slot, the last of them wins, as it would
        # one example at a time: a dict keeps the last value per key. The loop is over the batch
        # on the CPU (slots are CPU bookkeeping), and costs a third of the tensor-op version.
        last = {slot: i for i, slot in enumerate(slots) if slot >= 0}
        if not last:
            return
        source, target = torch.tensor(list(last.values())), torch.tensor(list(last.keys()))
        self.valid[target] = True
        self.slot_label[target] = y_cpu[source]
        device_source, device_target = source.to(raw.device), target.to(self.x.device)
        self.x.index_copy_(0, device_target, raw.index_select(0, device_source))
        self.y.index_copy_(0, device_target, y.index_select(0, device_source).to(LABEL_DTYPE))
        self.task.index_copy_(0, device_target, task.index_select(0, device_source).to(LABEL_DTYPE))
        if self.store_logits:
            self.logits.index_copy_(0, device_target, logits.detach().index_select(0, device_source).to(LOGIT_DTYPE))

    # -- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, rank: int = 0, world_size: int = 1) -> Replayed:
        """``n`` stored examples drawn uniformly without replacement (fewer if fewer are stored).

        Under DDP every rank passes its ``rank``: the draw of ``n * world_size`` slots is the same
        on every rank (identical generators) and each rank takes its own share, so ranks replay
        different examples and the generators stay identical.
        """
        if self.is_empty:
            raise ValueError("sample() from an empty buffer")
        if self.policy == "reservoir":  # reservoir slots fill in order and are never freed
            stored = min(self.seen, self.capacity)
            take = min(n * world_size, stored)
            chosen = torch.randperm(stored, generator=self.generator)[:take]
        else:
            occupied = torch.nonzero(self.valid).flatten()
            take = min(n * world_size, len(occupied))
            chosen = occupied[torch.randperm(len(occupied), generator=self.generator)[:take]]
        if world_size > 1:
            chosen = chosen[rank::world_size]
        return self.get(chosen)

    def get(self, slots: torch.Tensor) -> Replayed:
        s = slots.to(self.x.device)
        # index_select, not advanced indexing: a fifth of the cost on a CPU for a replay-sized draw
        logits = self.logits.index_select(0, s) if self.logits is not None else None
        return Replayed(
            self.x.index_select(0, s), self.y.index_select(0, s), self.task.index_select(0, s), logits, slots
        )

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "policy": self.policy,
            "store_logits": self.store_logits,
            "seen": self.seen,
            "generator": self.generator.get_state(),
            "valid": self.valid.clone(),
            "slot_label": self.slot_label.clone(),
            "class_order": self.class_order.clone(),
            "seen_per_class": self.seen_per_class.clone(),
            **{name: t.detach().cpu().clone() for name, t in self._fields().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("capacity", "policy", "store_logits"):
            if state[key] != getattr(self, key):
                raise ConfigError(
                    f"method.{'buffer_size' if key == 'capacity' else key}",
                    f"the checkpoint's buffer has {key}={state[key]!r} but the config asks for {getattr(self, key)!r}",
                )
        self.seen = int(state["seen"])
        self.generator.set_state(state["generator"])
        self.valid = state["valid"].clone()
        self.slot_label = state["slot_label"].clone()
        self.class_order = state["class_order"].clone()
        self.seen_per_class = state["seen_per_class"].clone()
        for name in ("x", "y", "task", "logits"):
            setattr(self, name, state[name].clone() if state.get(name) is not None else None)
