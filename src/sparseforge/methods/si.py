"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017; Mammoth's ``si``).

Every optimizer step adds ``-g_i * delta_i`` to parameter ``i``'s path integral ``omega_i``,
where ``delta_i`` is the step's update of the parameter and ``g_i`` the gradient of the task loss
alone (the penalty's own gradient, known in closed form, is taken out, as in the authors' code
and Mammoth). At a task's end the importance grows by ``omega_i / ((theta_i - anchor_i)^2 + xi)``
(the squared distance travelled over the task, damped by ``xi``), the anchor moves to the current
parameters and ``omega`` restarts at zero. The penalty is ``c * sum_i importance_i (theta_i -
anchor_i)^2``.

``g`` is read in the module's ``on_before_optimizer_step``, which Lightning calls after the
callbacks' (the sparsity callback has masked it) and before gradient clipping, as Mammoth reads
it before its value clipping; ``delta`` is measured around the optimizer step only, so weights
that move for another reason (a mask update zeroing a dropped weight, a regrown weight) add
nothing. Mammoth also clips gradient values at 1 for SI: ``trainer.gradient_clip_val=1
trainer.gradient_clip_algorithm=value``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparseforge.methods.base import METHODS, ContinualMethod
from sparseforge.methods.regularisation import QuadraticRegulariser, Tensors
from sparseforge.options import check


@METHODS.register("si")
class SynapticIntelligence(QuadraticRegulariser):
    @dataclass
    class Options(ContinualMethod.Options):
        #: c, the weight of the penalty.
        c: float = 1.0
        #: xi, the damping of the importance's denominator.
        xi: float = 0.9

        def __post_init__(self) -> None:
            check("method.c", self.c >= 0, f"must be >= 0, got {self.c}")
            check("method.xi", self.xi > 0, f"must be > 0, got {self.xi}")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.path_integral: Tensors = {}
        self._step_start: Tensors | None = None  # parameters before this step
        self._task_gradient: Tensors = {}

    @property
    def penalty_weight(self) -> float:
        return self.options.c

    def regulariser_state(self) -> dict[str, Tensors]:
        return {**super().regulariser_state(), "path_integral": self.path_integral}

    def begin_task(self, task) -> None:
        super().begin_task(task)
        if not self.anchor:  # the first task: its distance travelled is counted from here
            self.anchor = self.parameter_values()
        if not self.path_integral:
            self.path_integral = {n: torch.zeros_like(t) for n, t in self.anchor.items()}

    # -- the path integral, one optimizer step at a time ----------------------------------------------
    def on_before_optimizer_step(self, optimizer) -> None:
        self.start_step()

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.accumulate_path_integral()

    def start_step(self) -> None:
        """With the step's gradients in place: keep the parameters and the task loss's gradient."""
        params = self.regularised_parameters()
        self._follow(next(iter(params.values())).device)
        self._step_start = {n: p.detach().clone() for n, p in params.items()}
        self._task_gradient = {
            n: p.grad - self.penalty_gradient(n, p.detach()) if self.importance else p.grad.clone()
            for n, p in params.items()
            if p.grad is not None
        }

    def accumulate_path_integral(self) -> None:
        """After the optimizer step: ``omega -= g * (theta_after - theta_before)``."""
        if self._step_start is None:
            return
        for n, p in self.regularised_parameters().items():
            if n in self._task_gradient:
                self.path_integral[n] -= self._task_gradient[n] * (p.detach() - self._step_start[n])
        self._step_start, self._task_gradient = None, {}

    def end_task(self, task) -> None:
        super().end_task(task)
        theta = self.parameter_values()
        self._follow(next(iter(theta.values())).device)
        xi = self.options.xi
        importance = self.importance or {n: torch.zeros_like(t) for n, t in theta.items()}
        self.importance = {
            n: importance[n] + self.path_integral[n] / ((theta[n] - self.anchor[n]).square() + xi) for n in theta
        }
        self.anchor = theta
        self.path_integral = {n: torch.zeros_like(t) for n, t in theta.items()}
