"""Averaged Gradient Episodic Memory, A-GEM (Chaudhry et al. 2019; Mammoth's ``agem``).

At the end of each task, ``buffer_size // n_tasks`` of its training examples, drawn at random,
enter the episodic memory. From the second task on, every step computes a reference gradient
``r`` on a draw of ``minibatch_size`` memory examples; when the current gradient ``g`` would
increase the memory's loss (``g . r < 0``) it is replaced by its projection
``g - (g . r / r . r) r``, which has ``g . r = 0``.

Order with the sparsity engine: Lightning calls the callbacks' ``on_before_optimizer_step``
before the module's, so the sparsity callback has already masked ``g`` (and RigL has seen its
dense version) when the projection runs here. ``r`` is masked the same way before the
projection, so the projection stays inside the weights that may move: the projected gradient is
still masked, and it is A-GEM in the sparse network's own parameter space. Gradient clipping
(Lightning's) comes after. Under DDP ``g`` is already all-reduced; ``r`` is computed on each
rank's share of a common memory draw and all-reduced (mean) here, so ranks project alike.

Differences from Mammoth: Mammoth's ``end_task`` stores one training batch of the task (its
``samples_per_task`` is computed but unused); this stores ``buffer_size // n_tasks`` examples
per task, as the paper's episodic memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparseforge.errors import ConfigError
from sparseforge.methods.base import METHODS, ContinualMethod
from sparseforge.methods.replay import ReplayMethod
from sparseforge.utils.distributed import all_reduce_sum_, world_size


def project_gradient(g: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A-GEM's update direction: ``g`` when ``g . r >= 0``, else ``g`` minus its part along ``r``."""
    dot = torch.dot(g, reference)
    if dot >= 0:
        return g
    return g - (dot / torch.dot(reference, reference)) * reference


@METHODS.register("agem")
class AGEM(ReplayMethod):
    # the memory draw is not tied to the batch size: Mammoth's best Split-MNIST draw is 128
    config_wiring = ContinualMethod.config_wiring

    @dataclass
    class Options(ReplayMethod.Options):
        #: Memory examples per reference gradient.
        minibatch_size: int = 128

    def check_setup(self, datamodule) -> None:
        super().check_setup(datamodule)
        n = datamodule.n_tasks
        if self.buffer.capacity < n:
            raise ConfigError(
                "method.buffer_size", f"{self.buffer.capacity} leaves no slot for some of the {n} tasks", f">= {n}"
            )

    def end_task(self, task) -> None:
        """The task's share of the memory: a seeded random sample of its training examples (the same
        on every rank)."""
        super().end_task(task)
        per_task = self.buffer.capacity // self.datamodule.n_tasks
        g = torch.Generator().manual_seed(self.options.seed * 1_000_003 + task.id)
        chosen = task.train_index[torch.randperm(len(task.train_index), generator=g)[:per_task]]
        data = self.datamodule.train_data
        images, _ = self.datamodule.locate(chosen)  # training ids -> images (domain-IL ids run past the split)
        raw = data.raw(images).to(self.device)
        self.buffer.add(raw, data.y[images].to(self.device), torch.full_like(images, task.id).to(self.device))

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.buffer.is_empty:
            return
        params = [p for p in self.model.parameters() if p.grad is not None]
        g = torch.cat([p.grad.flatten() for p in params])
        projected = project_gradient(g, self.reference_gradient(params))
        if projected is not g:
            for p, new in zip(params, projected.split([p.numel() for p in params]), strict=True):
                p.grad.copy_(new.view_as(p))

    def reference_gradient(self, params: list[torch.Tensor]) -> torch.Tensor:
        """The memory draw's loss gradient, flat, masked like the current gradient (see the docstring)."""
        drawn = self.replay()
        loss = F.cross_entropy(self(drawn.x), drawn.y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        masks = self.sparsifier.masks if self.sparsifier is not None else None
        mask_of = {id(masks.weight(name)): masks[name] for name in masks} if masks is not None else {}
        parts = []
        for p, grad in zip(params, grads, strict=True):
            grad = torch.zeros_like(p) if grad is None else grad
            parts.append((grad * mask_of[id(p)] if id(p) in mask_of else grad).flatten())
        reference = torch.cat(parts)
        if world_size() > 1:
            reference = all_reduce_sum_(reference) / world_size()
        return reference
