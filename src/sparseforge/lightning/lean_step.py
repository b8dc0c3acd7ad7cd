"""Lightning's automatic optimisation, without the layers that do nothing on a plain step.

For one optimizer step Lightning builds a closure, then calls the module's ``optimizer_step``
hook, which calls ``LightningOptimizer.step``, ``Strategy.optimizer_step``,
``Precision.optimizer_step`` and finally ``torch.optim.Optimizer.step(closure)``, which runs the
closure (training step, zero-grad, backward) and a wrapper around it (``on_before_optimizer_step``
and gradient clipping). :class:`LeanAutomaticOptimization` runs the same pieces in the same order, each
through Lightning's own code (``_training_step``, the zero-grad hooks, ``Strategy.backward``,
``Precision._after_closure``), and then steps the optimizer directly: the same hooks, the same
progress counters, the same arithmetic.

The training step and the backward pass skip one layer each as well: the strategy-hook wrapper
around ``SingleDeviceStrategy.training_step`` and ``.backward``, whose own work is the
precision's step context (a ``nullcontext`` at full precision) and the precision's
``pre_backward``, ``backward`` and ``post_backward`` (the ``on_before_backward``, ``backward``
and ``on_after_backward`` hooks). Lightning also divides the loss by the number of accumulated
batches, here 1: a division that returns the same tensor values, bit for bit, and adds an
autograd node, so it is left out.

It takes this path only where the layers it skips are Lightning's own do-nothing defaults: one
device (``SingleDeviceStrategy`` itself, its model not wrapped), full or bf16 precision without a
gradient scaler, no gradient accumulation, a module that does not override ``optimizer_step``,
an optimizer that needs no closure (L-BFGS does) and has no step pre-hook, and the no-op profiler
(another profiler records every layer). Anything else runs Lightning's own loop, unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import nullcontext
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.loops.optimization.automatic import ClosureResult, _AutomaticOptimization
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch.optim import optimizer as torch_optimizer

from sparseforge.lightning.profiler import NoProfiler

_NOTHING = nullcontext()


def _takes_the_lean_path(trainer, optimizer) -> bool:
    precision = trainer.strategy.precision_plugin
    module = trainer.lightning_module
    return (
        type(trainer.strategy) is SingleDeviceStrategy
        and trainer.strategy.model is module
        and isinstance(trainer.profiler, NoProfiler)
        and (type(precision) is Precision or (type(precision) is MixedPrecision and precision.scaler is None))
        and trainer.accumulate_grad_batches == 1
        and type(module).optimizer_step is LightningModule.optimizer_step
        and not isinstance(optimizer, torch.optim.LBFGS)
        # a step pre-hook runs before the closure inside Optimizer.step; here it would run after it
        and not getattr(optimizer, "_optimizer_step_pre_hooks", None)
        and not torch_optimizer._global_optimizer_pre_hooks
    )


class LeanAutomaticOptimization(_AutomaticOptimization):
    """Lightning's automatic optimisation loop (see the module docstring for what it skips)."""

    def run(self, optimizer, batch_idx: int, kwargs: OrderedDict) -> dict[str, Any]:
        trainer = self.trainer
        if self._skip_backward or not _takes_the_lean_path(trainer, optimizer):
            return super().run(optimizer, batch_idx, kwargs)
        progress = self.optim_progress.optimizer.step
        progress.increment_ready()
        # What Optimizer.step(closure) does with Lightning's closure: run it with gradients on.
        with torch.enable_grad():
            result = self._lean_training_step(kwargs)
            if result.closure_loss is None:
                self._warn_no_loss()
            self._on_before_zero_grad(optimizer)
            self._optimizer_zero_grad(batch_idx, optimizer)
            if result.closure_loss is not None:
                self._lean_backward(result.closure_loss, optimizer)
        # Precision's wrapper around the closure: on_before_optimizer_step, gradient clipping.
        trainer.strategy.precision_plugin._after_closure(trainer.lightning_module, optimizer)
        optimizer.step()
        progress.increment_completed()
        return {} if result.loss is None else result.asdict()

    def _lean_training_step(self, kwargs: OrderedDict) -> ClosureResult:
        """``_training_step`` through ``SingleDeviceStrategy.training_step``: the same hook name,
        the same precision context, the same result (without the division by 1)."""
        module = self.trainer.lightning_module
        precision = self.trainer.strategy.precision_plugin
        previous, module._current_fx_name = module._current_fx_name, "training_step"
        with _NOTHING if type(precision) is Precision else precision.train_step_context():
            output = module.training_step(*kwargs.values())
        module._current_fx_name = previous
        if isinstance(output, torch.Tensor):
            return ClosureResult(output)
        return ClosureResult.from_training_step_output(output, 1)

    def _lean_backward(self, loss: torch.Tensor, optimizer) -> None:
        """``SingleDeviceStrategy.backward``, whose own pre- and post-backward do nothing."""
        module = self.trainer.lightning_module
        precision = self.trainer.strategy.precision_plugin
        previous, module._current_fx_name = module._current_fx_name, "backward"
        loss = precision.pre_backward(loss, module)
        precision.backward(loss, module, optimizer)
        precision.post_backward(loss, module)
        module._current_fx_name = previous

    @staticmethod
    def _warn_no_loss() -> None:
        from lightning.pytorch.loops.optimization.automatic import Closure

        Closure.warning_cache.warn("`training_step` returned `None`. If this was on purpose, ignore this warning...")


def install_lean_optimization(trainer) -> None:
    """Give ``trainer``'s training loop :class:`LeanAutomaticOptimization` (keeping its progress)."""
    epoch_loop = trainer.fit_loop.epoch_loop
    lean = LeanAutomaticOptimization(trainer)
    lean.optim_progress = epoch_loop.automatic_optimization.optim_progress
    epoch_loop.automatic_optimization = lean
