"""``SparseExecution``: puts the chosen backend under a ``Sparsifier``'s masks and keeps it in step.

Per sparse layer it picks the kernels (``csr``, ``sparseprop``, or ``auto``'s timed choice among
them and the dense kernels), compresses the layer (its trainable tensor becomes the active
values), and hooks it to the engine:

- the optimizer: an existing one is patched (dense weight -> values, state gathered); it must be
  element-wise (every state tensor is per weight), else one ``ConfigError``; optimizer state found
  in the dense layout (a checkpoint written by the masked backend) is gathered before the step,
  and ``optimizer.state_dict()`` writes per-element state in the dense layout, so checkpoints stay
  interchangeable between backends;
- the dense weight gradient is computed only on steps where the rule reads it (RigL's update
  steps; every step for ``momentum`` and ``tdm``), and all-reduced under DDP like ``.grad``;
- plans are rebuilt once per topology update and after a checkpoint load (``MaskSet`` hands the
  changes to the layers); their build time is reported.

Layers no backend supports stay on the masked path, and that is logged once per layer.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sparseforge.errors import ConfigError
from sparseforge.sparsity.backends import sparseprop as sparseprop_kernels
from sparseforge.sparsity.backends.auto import AutoChooser
from sparseforge.sparsity.backends.csr import CSRExecutor
from sparseforge.sparsity.backends.dense import DenseExecutor
from sparseforge.sparsity.backends.layers import COMPRESSIBLE, compress, set_optimizer
from sparseforge.utils.distributed import world_size

log = logging.getLogger("sparseforge")

BACKENDS = ("masked", "csr", "sparseprop", "auto")
CPU_ONLY = ("csr", "sparseprop")
#: Optimizers whose every state tensor is per weight, so that dropping pruned entries and
#: starting grown ones at zero state is exactly what the masked path does.
ELEMENTWISE_OPTIMIZERS = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adadelta,
    torch.optim.Adagrad,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.RMSprop,
)
EXECUTORS = {"dense": DenseExecutor(), "csr": CSRExecutor(), "sparseprop": sparseprop_kernels.SparsePropExecutor()}


def check_optimizer(optimizer: torch.optim.Optimizer, backend: str) -> None:
    if not isinstance(optimizer, ELEMENTWISE_OPTIMIZERS):
        raise ConfigError(
            "sparsity.backend",
            f"backend={backend} trains compressed weights, which needs an element-wise optimizer; "
            f"{type(optimizer).__name__} is not one",
            "sparsity.backend=masked, or an optimizer among " + ", ".join(c.__name__ for c in ELEMENTWISE_OPTIMIZERS),
        )


class SparseExecution:
    def __init__(self, sparsifier, backend: str, optimizer: torch.optim.Optimizer | None = None):
        if backend not in BACKENDS or backend == "masked":
            raise ConfigError("sparsity.backend", f"unknown value {backend!r}", ", ".join(BACKENDS))
        if backend == "sparseprop":
            reason = sparseprop_kernels.unavailable_reason()
            if reason:
                raise ConfigError("sparsity.backend", f"backend=sparseprop: {reason}", "masked, csr, auto")
        if optimizer is not None:  # before any layer changes: a refused optimizer leaves the model as it was
            check_optimizer(optimizer, backend)
        self.backend = backend
        self.sparsifier = sparsifier
        masks = sparsifier.masks
        self.layers: dict[str, nn.Module] = {}
        self.kept_masked: dict[str, str] = {}
        self.plan_builds = 0
        self.plan_seconds = 0.0
        # () -> the fp16 loss scale (set by the trainer glue under a GradScaler): the dense gradient
        # is captured in the backward pass, before the optimizer's gradients are unscaled
        self.loss_scale = None
        self._hooked: weakref.WeakSet = weakref.WeakSet()
        self._checked: weakref.WeakSet = weakref.WeakSet()
        self.candidates: dict[str, list] = {}
        replaced: dict[int, nn.Parameter] = {}
        for name in masks:
            layer = masks.layers[name]
            usable, reason = self._executors_for(layer)
            if not usable:
                self.kept_masked[name] = reason
                log.info("sparsity.backend=%s: layer %s stays masked: %s", backend, name, reason)
                continue
            old_weight = layer.weight
            compress(layer, name, masks[name], usable[0], self.wants_dense_grad)
            layer.on_new_plan = self._new_plan
            replaced[id(old_weight)] = (old_weight, layer)
            self.layers[name] = layer
            masks.compressed[name] = layer
            masks.forget_factors(name)
            self.candidates[name] = usable
            self._prepare_kernels(layer)
        self.chooser = AutoChooser(self.candidates) if backend == "auto" else None
        for layer in self.layers.values():
            layer.chooser = self.chooser
        if optimizer is not None and self.layers:
            _swap_in_optimizer(optimizer, replaced)
            self.attach_optimizer(optimizer)

    # -- which kernels ---------------------------------------------------------------------------
    def _executors_for(self, layer: nn.Module) -> tuple[list, str]:
        if type(layer) not in COMPRESSIBLE:
            return [], f"{type(layer).__name__} has no sparse kernels (only nn.Linear and nn.Conv2d)"
        if self.backend in CPU_ONLY:
            executor = EXECUTORS[self.backend]
            reason = executor.unsupported(layer)
            return ([], reason) if reason else ([executor], "")
        usable = [ex for key, ex in EXECUTORS.items() if key != "dense" and ex.unsupported(layer) is None]
        if not usable:  # auto: nothing sparse to choose from here
            why = "; ".join(f"{k}: {ex.unsupported(layer)}" for k, ex in EXECUTORS.items() if k != "dense")
            return [], f"no sparse kernel applies ({why})"
        return [EXECUTORS["dense"], *usable], ""

    def _prepare_kernels(self, layer: nn.Module) -> None:
        """Build the index structures the layer's kernels need now (timed with the plan)."""
        names = {layer.executor.name}  # auto builds a candidate's indices when it times it
        if "csr" in names:
            layer.plan.csr()
            layer.plan.csr_transposed()
        if "sparseprop" in names:
            if isinstance(layer, nn.Linear):
                layer.plan.csr()
            else:
                layer.plan.conv_oc_ic_xy()

    def _new_plan(self, layer: nn.Module, seconds: float) -> None:
        import time

        start = time.process_time()
        self._prepare_kernels(layer)
        self.plan_builds += 1
        self.plan_seconds += seconds + time.process_time() - start

    # -- the dense gradient ------------------------------------------------------------------------
    def wants_dense_grad(self) -> bool:
        sp = self.sparsifier
        rule = sp.rule
        if rule is None:
            return False
        if rule.observes_every_step:
            return True
        if not rule.needs_dense_grad or sp.horizon is None:
            return False
        return sp.is_update_step(sp.step + 1)

    # -- around the optimizer step ----------------------------------------------------------------
    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Check it once, gather any dense-layout state, write dense-layout state in its state_dict."""
        if optimizer not in self._checked:
            check_optimizer(optimizer, self.backend)
            self._checked.add(optimizer)
            optimizer.register_state_dict_post_hook(self._dense_layout_state)
        for layer in self.layers.values():
            set_optimizer(layer, optimizer)
            state = optimizer.state.get(layer.values)
            for key, value in list((state or {}).items()):
                if torch.is_tensor(value) and tuple(value.shape) == layer.plan.shape and value.dim() > 1:
                    state[key] = layer.plan.gather(value)

    def before_step(self, optimizer: torch.optim.Optimizer | None) -> None:
        if optimizer is not None and self.layers:
            self.attach_optimizer(optimizer)
        scale = self.loss_scale() if self.loss_scale is not None else None
        for name in sorted(self.layers):  # the same order on every rank
            grad = self.layers[name]._dense_grad
            if grad is None:
                continue
            if world_size() > 1:  # averaged like DDP averages .grad
                dist.all_reduce(grad)
                grad.div_(world_size())
            if scale is not None:
                grad.div_(scale)

    def release_dense_grads(self) -> None:
        for layer in self.layers.values():
            layer.clear_dense_grad()

    def after_step(self) -> None:
        self.release_dense_grads()

    def check_device(self) -> None:
        """One ConfigError when a CPU-only backend meets weights on a GPU (after the model moved)."""
        if self.backend not in CPU_ONLY:
            return
        for name, layer in self.layers.items():
            if layer.values.device.type != "cpu":
                raise ConfigError(
                    "sparsity.backend",
                    f"backend={self.backend} runs on the CPU only, but layer {name} is on {layer.values.device}",
                    "sparsity.backend=masked (or auto) on a GPU",
                )

    def _dense_layout_state(self, optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        index, positions = 0, {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                positions.setdefault(id(p), index)
                index += 1
        for layer in self.layers.values():
            i = positions.get(id(layer.values))
            state = state_dict["state"].get(i)
            if not state:
                continue
            state_dict["state"][i] = {
                k: layer.plan.scatter(v) if torch.is_tensor(v) and v.dim() == 1 and v.shape == layer.values.shape else v
                for k, v in state.items()
            }
        return state_dict

    # -- reporting ---------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        executors = {name: layer.executor.name for name, layer in self.layers.items()}
        return {
            "backend": self.backend,
            "executors": executors,
            "kept_masked": dict(self.kept_masked),
            "auto_choices": dict(self.chooser.choices) if self.chooser is not None else {},
            "plan_builds": self.plan_builds,
            "plan_build_cpu_seconds": self.plan_seconds,  # process CPU time (all threads)
            "plan_index_bytes": sum(layer.plan.index_bytes() for layer in self.layers.values()),
            "active_values": sum(layer.plan.nnz for layer in self.layers.values()),
        }


def _swap_in_optimizer(optimizer: torch.optim.Optimizer, replaced: dict[int, tuple]) -> None:
    """Replace each compressed layer's old dense weight by its values in an existing optimizer."""
    for group in optimizer.param_groups:
        group["params"] = [replaced[id(p)][1].values if id(p) in replaced else p for p in group["params"]]
    for old, layer in replaced.values():
        if old in optimizer.state:
            state = optimizer.state.pop(old)
            optimizer.state[layer.values] = {
                k: layer.plan.gather(v) if torch.is_tensor(v) and v.shape == old.shape else v for k, v in state.items()
            }
