"""Online EWC (Schwarz et al. 2018, "Progress & Compress"; Mammoth's ``ewc_on``).

After each task the diagonal Fisher information of the task's training data is folded into a
running estimate, ``F <- gamma * F + F_task``, and the parameters become the anchor; later tasks
pay ``e_lambda * sum_i F_i (theta_i - anchor_i)^2`` (no 1/2, as Mammoth).

``F_task`` is Mammoth's estimate: the mean over the task's training examples of
``p(y|x) * (d log p(y|x) / d theta)^2`` for the true label ``y`` (the empirical Fisher, each
example weighted by the probability the model gives its label). Per-example gradients come from
``torch.func`` (vmap over a batch) instead of one backward per example; the model is in eval
mode and inputs are not augmented; the mean is exact (Mammoth divides by the number of batches
times the batch size). Under DDP each rank sums its share of the examples and the sums are
all-reduced. The Fisher of a pruned weight is that of its dense gradient: inert while the mask
keeps the weight at zero, it pulls the weight back to its anchor if a DST rule regrows it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from sparseforge.methods.base import METHODS, ContinualMethod
from sparseforge.methods.regularisation import QuadraticRegulariser, Tensors
from sparseforge.options import check
from sparseforge.utils.distributed import all_reduce_sum_, rank, world_size


@METHODS.register("ewc_on")
class OnlineEWC(QuadraticRegulariser):
    @dataclass
    class Options(ContinualMethod.Options):
        #: lambda, the weight of the penalty.
        e_lambda: float = 90.0
        #: gamma, how much of the running Fisher a new task keeps (1: the Fishers add up).
        gamma: float = 1.0
        #: Examples per batch of per-example gradients while estimating the Fisher (memory only).
        fisher_batch_size: int = 64

        def __post_init__(self) -> None:
            check("method.e_lambda", self.e_lambda >= 0, f"must be >= 0, got {self.e_lambda}")
            check("method.gamma", 0 <= self.gamma <= 1, f"must be in [0, 1], got {self.gamma}")
            size = self.fisher_batch_size
            check("method.fisher_batch_size", size >= 1, f"must be >= 1, got {size}")

    @property
    def penalty_weight(self) -> float:
        return self.options.e_lambda

    def end_task(self, task) -> None:
        super().end_task(task)
        fisher = self.fisher_information(task.train_index)
        if self.importance:
            fisher = {n: self.options.gamma * self.importance[n] + f for n, f in fisher.items()}
        self.importance = fisher
        self.anchor = self.parameter_values()

    def fisher_information(self, train_index: torch.Tensor) -> Tensors:
        """Mammoth's diagonal Fisher over these training examples (see the module docstring)."""
        shard = train_index[rank() :: world_size()]
        batches = (self.training_examples(chunk) for chunk in shard.split(self.options.fisher_batch_size))
        was_training = self.model.training
        self.model.eval()
        total = weighted_squared_gradients(self.model, self.regularised_parameters(), batches)
        self.model.train(was_training)
        return {n: all_reduce_sum_(t) / len(train_index) for n, t in total.items()}


def weighted_squared_gradients(model: nn.Module, params: dict[str, torch.Tensor], batches) -> Tensors:
    """``sum_examples p(y|x) * (d log p(y|x) / d theta)^2`` per parameter in ``params`` (by name),
    for the true label ``y``, over batches of ``(x, y)``; per-example gradients by ``torch.func``."""
    detached = {n: p.detach() for n, p in params.items()}
    buffers = dict(model.named_buffers())

    def log_likelihood(p, x, y):
        logits = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return -F.cross_entropy(logits, y.unsqueeze(0))

    per_example = vmap(grad_and_value(log_likelihood), in_dims=(None, 0, 0))
    total = {n: torch.zeros_like(p) for n, p in detached.items()}
    for x, y in batches:
        grads, log_p = per_example(detached, x, y)
        weight = log_p.exp()
        for n, g in grads.items():
            total[n] += torch.tensordot(weight, g.square(), dims=1)
    return total
