"""The shared base of the rehearsal methods (ER, DER, DER++): a buffer and two verbs.

``replay()`` draws ``minibatch_size`` stored examples and re-augments their raw uint8 inputs with
the datamodule's training transform (``augment``), as Mammoth does; ``remember(batch, logits)``
offers the current batch (raw inputs, labels, task ids, optionally logits) to the buffer. A method
then only writes its loss in ``observe``.

Under DDP the buffer is identical on every rank: ``remember`` inserts the batches of all ranks
(gathered in rank order) with generators that stay in step, and each rank replays its own share
of a common draw. The checkpoint (written by rank 0) therefore restores every rank exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, NamedTuple

import torch

from sparseforge.continual.buffer import ReplayBuffer
from sparseforge.errors import ConfigError
from sparseforge.methods.base import ContinualMethod
from sparseforge.options import check
from sparseforge.utils.distributed import gather_cat, world_size


class ReplayBatch(NamedTuple):
    x: torch.Tensor  # training view (augmented, normalised) of the stored raw inputs
    y: torch.Tensor
    task: torch.Tensor
    logits: torch.Tensor | None  # stored logits (DER, DER++), else None


class BufferPolicy(str, Enum):
    reservoir = "reservoir"
    class_balanced = "class_balanced"


class ReplayMethod(ContinualMethod):
    #: Whether the buffer also stores the logits of the current batch (DER, DER++).
    store_logits: ClassVar[bool] = False
    config_wiring = {**ContinualMethod.config_wiring, "minibatch_size": "${data.batch_size}"}

    @dataclass
    class Options(ContinualMethod.Options):
        #: Examples the buffer holds (Mammoth's usual 500).
        buffer_size: int = 500
        #: Examples per buffer draw; the configs set it to data.batch_size (Mammoth's convention).
        minibatch_size: int = 32
        #: reservoir: every example of the stream equally likely to stay; class_balanced: equal
        #: shares per seen class.
        buffer_policy: BufferPolicy = BufferPolicy.reservoir

        def __post_init__(self) -> None:
            check("method.minibatch_size", self.minibatch_size >= 1, f"must be >= 1, got {self.minibatch_size}")

    def __init__(self, model, optimizer, lr_scheduler=None, **options):
        super().__init__(model, optimizer, lr_scheduler, **options)
        o = self.options
        self.buffer = ReplayBuffer(o.buffer_size, o.buffer_policy.value, store_logits=self.store_logits, seed=o.seed)

    # -- the two verbs ---------------------------------------------------------------------------------
    def replay(self) -> ReplayBatch | None:
        """A re-augmented draw of ``minibatch_size`` stored examples, or None while the buffer is empty."""
        if self.buffer.is_empty:
            return None
        drawn = self.buffer.sample(
            self.options.minibatch_size, rank=self.global_rank, world_size=self.trainer.world_size
        )
        # Each example through its own task's transform (domain-IL) and the training augmentation.
        return ReplayBatch(self.datamodule.augment(drawn.raw, drawn.task), drawn.y, drawn.task, drawn.logits)

    def remember(self, batch, logits: torch.Tensor | None = None) -> None:
        fields = [batch.raw, batch.y, batch.task] + ([logits.detach()] if self.store_logits else [])
        if world_size() > 1:
            fields = [gather_cat(t) for t in fields]
        self.buffer.add(*fields)

    # -- checks, state, summary ------------------------------------------------------------------------
    def check_setup(self, datamodule) -> None:
        super().check_setup(datamodule)
        stream = len(torch.unique(torch.cat([t.train_index for t in datamodule.tasks])))
        if self.buffer.capacity > stream:
            raise ConfigError(
                "method.buffer_size",
                f"{self.buffer.capacity} is larger than the {stream} training examples of the whole stream",
                f"1..{stream}",
            )

    def method_state(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict()}

    def load_method_state(self, state: dict[str, Any]) -> None:
        if "buffer" in state:
            self.buffer.load_state_dict(state["buffer"])

    def summary_section(self, trainer) -> dict[str, Any]:
        return {"replay": self.buffer.memory_report()}
