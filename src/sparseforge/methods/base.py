"""The one LightningModule every method extends.

A method is a small subclass that overrides a few hooks (Mammoth's ``observe`` granularity,
Avalanche's before/after hooks):

- ``observe(batch)``: the loss of one training step (default: cross-entropy on the batch);
- ``begin_task(task)`` / ``end_task(task)``: called by the task loop at task boundaries;
- ``training_indices(task, tasks)``: which training examples this task trains on;
- ``predict_scores(x)``: class scores used for evaluation (default: the model's logits);
- ``evaluate_task_context(task)``: a context manager the task loop enters while it scores one
  task's test data (default: none). A method with one subnetwork per task (CL-with-DST, PackNet) puts
  that task's weights into the model there and restores the training state on exit;
- ``Options``: the method's settings, one dataclass next to it (extend the parent's); the
  constructor builds ``self.options`` from its keyword arguments, unknown keys are errors, and
  the Hydra schema of ``configs/method/<name>.yaml`` is generated from it (``METHODS.register``);
- ``check_stream(datamodule)`` / ``check_setup(datamodule)``: pre-flight checks (raise
  ``ConfigError``), run by ``train.build`` before anything is written: against the stream's
  settings before any data is read, and against the loaded data after;
- ``method_state()`` / ``load_method_state(state)``: extra state that must go into checkpoints
  (replay buffers, statistics). It is saved with every checkpoint and restored on resume.

What a method needs from the sparsity engine, it declares; the Lightning glue reads the
declaration and hands the engine over, so a method never imports the glue:

- ``sparsity_masks``: ``"any"`` (any ``sparsity=`` group), ``"engine"`` (builds on the engine's
  masks, e.g. SparCL: a sparse group is required), ``"own"`` (keeps masks of its own, e.g.
  SHARP, PackNet: ``sparsity=dense`` is required) or ``"fixed"`` (the engine's masks, which must
  never change: dense or a static rule, e.g. GDumb, which takes no gradient step on the stream).
  A wrong pairing is one config error before any work;
- ``gradient_policy()``: an object the run's ``Sparsifier`` calls around every optimizer step
  (SparCL's dynamic gradient masking), or None;
- ``attach_sparsifier(sparsifier)``: receives the run's ``Sparsifier`` (``self.sparsifier``)
  before ``setup``;
- ``current_ce_classes``: which classes the current batch's cross-entropy sees, ``"all"`` or
  ``"task"`` (the current task's only; replay terms always see every class).

Soft targets: with ``data.batch_transform`` (timm's Mixup/CutMix, label smoothing) the current
batch carries soft targets (``training_target(batch)``: N x C) next to its hard labels
``batch.y``. Methods whose loss is plain cross-entropy on the current batch take them
(``supports_soft_targets``: finetune, joint, ER); the others refuse the combination before any
work. Replay buffers always store the hard labels and the un-mixed raw inputs.

Task boundaries: ``needs_task_boundaries`` says whether the method relies on being told where a
task starts and ends (``begin_task``/``end_task``, the task id, a fresh optimizer per task). In a
task-free stream (``scenario.online=true``) the task loop calls neither hook, ``current_task``
stays 0 and the optimizer lives across the hidden boundaries, so such a method refuses the stream
before any work, in one line. Set it to True on a method that consolidates, freezes, distils or
retrains at a task's end or start (EWC, LwF, iCaRL, GDumb, PackNet; here SparCL, SHARP and joint);
replay methods leave it False. ``task_boundaries_hidden`` tells a method that runs either way
which kind of stream it is in (ER-ACE replays from the first step when boundaries are hidden).

Per-step bookkeeping belongs in ``observe``/``training_step`` (or an optimizer-step hook), not in
the module's ``on_train_batch_end``: Lightning calls that after the callbacks', and so after a
checkpoint saved inside an epoch (``callbacks.model_checkpoint.every_n_train_steps``).

Everything else (optimizers from config, logging, the task loop, sparsity) is shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from enum import Enum
from functools import cached_property, partial
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from sparseforge.continual.scenarios import Task
from sparseforge.errors import ConfigError
from sparseforge.options import build_options
from sparseforge.registry import Registry
from sparseforge.utils.logging import logger_writes_at_this_batch
from sparseforge.utils.param_groups import WeightDecayGroups

#: name -> method class; registering also stores the schema of configs/method/<name>.yaml.
METHODS: Registry = Registry("method", "method", schema_group="method")


class SchedulerInterval(str, Enum):
    epoch = "epoch"
    step = "step"


def training_target(batch) -> torch.Tensor:
    """What the current batch's cross-entropy trains towards: the soft targets of a batch transform
    (mixup) when there are any, else the labels."""
    target = getattr(batch, "target", None)
    return batch.y if target is None else target


class ContinualMethod(pl.LightningModule):
    #: Name used in configs, logs and errors.
    name: ClassVar[str] = "base"
    #: Whether task-IL evaluation (logits masked per task) is meaningful for this method.
    supports_task_il: ClassVar[bool] = True
    #: How the method relates to the sparsity engine's masks: "any" | "engine" | "own" | "fixed" (see above).
    sparsity_masks: ClassVar[str] = "any"
    #: Defaults of the generated config schema that point at other config keys.
    config_wiring: ClassVar[dict[str, str]] = {"seed": "${seed}"}
    #: Whether the loss accepts the soft targets of a batch transform (mixup; see above).
    supports_soft_targets: ClassVar[bool] = False
    #: Whether the method must be told where tasks start and end (see above); such a method
    #: refuses a task-free stream (scenario.online=true).
    needs_task_boundaries: ClassVar[bool] = False

    @dataclass
    class Options:
        #: When the learning-rate scheduler steps: every epoch or every optimizer step.
        lr_scheduler_interval: SchedulerInterval = SchedulerInterval.epoch
        #: Seeds the method's own random choices (identical on every DDP rank); configs: ${seed}.
        seed: int = 0

    def __init__(
        self,
        model: nn.Module,
        optimizer: partial,
        lr_scheduler: partial | None = None,
        optimizer_groups: WeightDecayGroups | None = None,
        loss: nn.Module | None = None,
        **options: Any,
    ):
        super().__init__()
        self.options = build_options(self.Options, options, "method")
        if loss is not None and not self.supports_soft_targets:
            raise ConfigError(
                "loss", f"method {self.name} computes its own losses", "null, or method=finetune, joint or er"
            )
        self.loss_fn = loss  # the classification loss of the current batch (None: cross-entropy)
        self.model = model
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.optimizer_groups = optimizer_groups  # which parameters get weight decay (None: all)
        self.current_task = 0
        self._train_correct: torch.Tensor | None = None  # this epoch's correct predictions (device)
        self._train_seen = 0  # and examples, on this rank
        self._step_sums: dict[str, list] = {}  # per-step metrics since their last logged row
        self.sparsifier = None  # the run's Sparsifier, handed over by the glue (attach_sparsifier)
        self.current_ce_classes = "all"
        self._class_mask: torch.Tensor | None = None

    # -- hooks for methods -------------------------------------------------------------------------
    def observe(self, batch) -> torch.Tensor:
        logits = self(batch.x)
        self.track_accuracy(logits, batch.y)
        return self.classification_loss(self.current_ce_logits(logits), training_target(batch))

    def classification_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss towards labels or soft targets: the config group ``loss`` (e.g. timm's
        BinaryCrossEntropy), else cross-entropy."""
        return F.cross_entropy(logits, target) if self.loss_fn is None else self.loss_fn(logits, target)

    def track_accuracy(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Count the epoch's training accuracy (``train/acc``, logged at the epoch's end). Methods
        that override ``observe`` call it with the logits of the current-task batch. The count
        stays on the device: a step pays two tensor ops and no host synchronisation."""
        correct = (logits.detach().argmax(dim=1) == y).sum()
        self._train_correct = correct if self._train_correct is None else self._train_correct + correct
        self._train_seen += len(y)

    def begin_task(self, task: Task) -> None:
        self.current_task = task.id
        self._class_mask = None  # rebuilt for this task's classes at the first batch

    # -- what the method needs from the sparsity engine --------------------------------------------
    def attach_sparsifier(self, sparsifier) -> None:
        self.sparsifier = sparsifier

    def gradient_policy(self):
        return None

    def current_ce_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The current batch's logits as its cross-entropy sees them: the same tensor with
        ``current_ce_classes="all"`` (callers may test identity), else other tasks' classes at -inf."""
        if self.current_ce_classes == "all":
            return logits
        if self._class_mask is None or self._class_mask.shape[0] != logits.shape[1]:
            mask = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
            mask[list(self.tasks[self.current_task].classes)] = True
            self._class_mask = mask
        return logits.masked_fill(~self._class_mask, float("-inf"))

    def end_task(self, task: Task) -> None:
        pass

    def training_indices(self, task: Task, tasks: Sequence[Task]) -> torch.Tensor:
        return task.train_index

    def training_examples(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluation view and labels of training ids (a task's ``train_index``), on the device.
        Ids are not image positions on a stream with a view per task (domain-IL: task ``t``'s ids
        are ``t * N + i``), and each image is seen through its own task's transform."""
        dm = self.datamodule
        images, tasks = dm.locate(ids)
        x = dm.preprocess_eval(dm.train_data.raw(images).to(self.device), tasks.to(self.device))
        return x, dm.train_data.y[images].to(self.device)

    def predict_scores(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def evaluate_task_context(self, task: Task) -> AbstractContextManager:
        return nullcontext()

    @property
    def task_boundaries_hidden(self) -> bool:
        """Whether this run's stream is task-free (``scenario.online=true``)."""
        return bool(getattr(self.trainer.datamodule.scenario, "online", False))

    def check_setup(self, datamodule) -> None:
        """Checks that need the loaded data (e.g. a buffer against the data): after the data loads."""

    def check_stream(self, datamodule) -> None:
        """Checks against the stream's settings (scenario, batch transform), before any data is read."""
        if getattr(datamodule.scenario, "online", False):
            self._check_online()
        if datamodule.scenario.task_incremental and not self.supports_task_il:
            raise ConfigError("method", f"{self.name} cannot be evaluated task-incrementally", "scenario=class_il")
        if getattr(datamodule, "mixes_batches", False) and not self.supports_soft_targets:
            raise ConfigError(
                "data.batch_transform",
                f"method {self.name} trains on hard labels and cannot take the soft targets of a batch transform",
                "null, or method=finetune, joint or er",
            )

    def _check_online(self) -> None:
        if self.needs_task_boundaries:
            task_free = [n for n, m in METHODS.items() if not getattr(m, "needs_task_boundaries", False)]
            raise ConfigError(
                "scenario.online",
                f"method {self.name} needs task boundaries, which an online stream hides",
                "scenario.online=false, or method=" + ", ".join(task_free),
            )
        if self.lr_scheduler_factory is not None and self.options.lr_scheduler_interval is SchedulerInterval.epoch:
            raise ConfigError(
                "method.lr_scheduler_interval",
                "an online stream's epochs are its hidden tasks, so a scheduler cannot step per epoch",
                "step",
            )

    def method_state(self) -> dict[str, Any]:
        return {}

    def load_method_state(self, state: dict[str, Any]) -> None:
        pass

    def forward_batches(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        """The logits of several input batches (say, the current batch and buffer draws).

        One forward over their concatenation when no layer normalises over the batch: the logits
        are those of separate forwards, without paying the per-call cost once per batch (on a
        small model most of a step). With BatchNorm, one forward per batch, as Mammoth: a joint
        forward would normalise the batches together and change the method."""
        if len(xs) == 1 or self._normalises_over_batch:
            return [self(x) for x in xs]
        return list(self(torch.cat(xs)).split([len(x) for x in xs]))

    @cached_property
    def _normalises_over_batch(self) -> bool:
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())

    # -- Lightning ---------------------------------------------------------------------------------
    # Lightning sets ``_current_fx_name`` before and after every hook it calls, about 40 times a
    # step, and the step counters change every step. nn.Module.__setattr__ checks each value against
    # the module's parameters, submodules and buffers, which none of these ever are: they are
    # stored directly (measured: 2-3% of a batch-10 MLP step on a CPU).
    _PLAIN_ATTRIBUTES = frozenset({"_current_fx_name", "_train_correct", "_train_seen"})

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._PLAIN_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.observe(batch)
        self.log_step_metrics({"train/loss": loss}, prog_bar=True)
        return loss

    def log_step_metrics(self, values: dict[str, torch.Tensor | float], prog_bar: bool = False) -> None:
        """Log per-step training metrics as the mean over the steps each logged row covers.

        Loggers only write every ``trainer.log_every_n_steps`` steps; in between, the values are
        summed on the device, so a step costs neither a ``self.log`` call (Lightning bookkeeping,
        a tenth of a batch-10 MLP step or more on a CPU) nor a host synchronisation. A row at step s holds the mean over the steps since the previous row;
        ``trainer.log_every_n_steps=1`` logs every step's own value (a per-step curve). At an
        epoch's last batch the running mean also goes to ``trainer.callback_metrics`` (progress
        bar, summary.json) without a row.
        """
        trainer = self._trainer
        if trainer is None:  # called outside a fit (self.log would only warn)
            return
        write = logger_writes_at_this_batch(trainer)
        last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        for name, value in values.items():
            value = value.detach() if isinstance(value, torch.Tensor) else value
            window = self._step_sums.get(name)
            if window is None:
                window = self._step_sums[name] = [value, 1]
            else:
                window[0], window[1] = window[0] + value, window[1] + 1
            if write or last:
                total, steps = window
                self.log(name, total if steps == 1 else total / steps, prog_bar=prog_bar)
                if write:
                    del self._step_sums[name]

    def on_train_epoch_end(self) -> None:
        # train/acc once per epoch, over every rank's examples. Subclasses that override this
        # hook call super().
        accuracy = self.epoch_train_accuracy()
        if accuracy is not None:
            self.log("train/acc", accuracy)
            self._train_correct, self._train_seen = None, 0

    def epoch_train_accuracy(self) -> torch.Tensor | None:
        """This epoch's training accuracy so far, over every rank's examples (None before any)."""
        if not self._train_seen:
            return None
        seen = torch.tensor(self._train_seen, device=self._train_correct.device)
        counts = self.trainer.strategy.reduce(torch.stack([self._train_correct, seen]), reduce_op="sum")
        return counts[0].float() / counts[1].float()

    @property
    def datamodule(self):
        return self.trainer.datamodule

    @property
    def tasks(self) -> list[Task]:
        return self.trainer.datamodule.tasks

    def configure_optimizers(self):
        if self.optimizer_groups is not None:
            params = self.optimizer_groups.param_groups(self)
        else:
            params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.options.lr_scheduler_interval.value},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["method_state"] = {"current_task": self.current_task, **self.method_state()}
        # Non-empty only inside an epoch: at its end, on_train_epoch_end logged and reset it before
        # the checkpoint callback (a monitoring callback) ran.
        if self._train_seen:
            checkpoint["train_accuracy"] = {"correct": int(self._train_correct), "seen": self._train_seen}
        # The per-step metrics summed since their last logged row: a resumed run logs the same rows.
        checkpoint["step_metric_sums"] = {
            name: [float(total), steps] for name, (total, steps) in self._step_sums.items()
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = dict(checkpoint.get("method_state", {}))
        self.current_task = state.pop("current_task", 0)
        self.load_method_state(state)
        saved = checkpoint.get("train_accuracy")  # a checkpoint from inside an epoch
        if saved is not None:
            if "correct" not in saved:  # written by torchmetrics' MulticlassAccuracy (micro): tp, fn
                saved = {"correct": int(saved["tp"].sum()), "seen": int((saved["tp"] + saved["fn"]).sum())}
            self._train_correct = torch.tensor(saved["correct"], device=self.device)
            self._train_seen = int(saved["seen"])
        sums = checkpoint.get("step_metric_sums", {})
        self._step_sums = {
            name: [torch.tensor(total, device=self.device), steps] for name, (total, steps) in sums.items()
        }
