"""Compressed layers: a Linear or Conv2d whose trainable tensor is the vector of its active weights.

Installation swaps the class of the module in place (``nn.Linear`` -> ``CompressedLinear``) and
replaces its ``weight`` parameter by ``values`` (the active weights, in the plan's order) in the
same slot, so parameter order, hooks and the module tree stay as they were. Then:

- ``layer.weight`` is a read-only dense view (zeros outside the mask), materialised on access,
  for the update rules, ``MaskSet.check`` and user code;
- ``forward`` runs the layer's executor (``dense``, ``csr``, ``sparseprop``) on the plan;
- the optimizer sees ``values``: its step, momentum and Adam moments are O(active weights), and
  no masking pass is needed (pruned entries do not exist);
- ``state_dict`` writes the dense ``<layer>.weight`` (the masked path's checkpoint format), and
  ``load_state_dict`` reads it back at the active positions, so checkpoints move freely between
  backends;
- at a topology update (``MaskSet.set_masks``) ``remap`` moves the values and every per-element
  optimizer state tensor to the new plan: kept weights carry over, grown ones start at 0 with
  zero state, exactly as the masked path does.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Callable, Iterator

import torch
from torch import nn

from sparseforge.sparsity.backends.plan import Plan
from sparseforge.utils.distributed import world_size

_REFERENCE = {"on": False}


@contextlib.contextmanager
def reference_forward() -> Iterator[None]:
    """Compressed layers compute with dense kernels inside (FLOP counting, reference outputs)."""
    before = _REFERENCE["on"]
    _REFERENCE["on"] = True
    try:
        yield
    finally:
        _REFERENCE["on"] = before


class CompressedWeight:
    """Mixed into nn.Linear / nn.Conv2d by ``compress``; see the module docstring."""

    values: nn.Parameter
    plan: Plan
    executor: object
    sparse_name: str

    # -- the dense view ----------------------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        return self.plan.scatter(self.values)

    @property
    def dense_shape(self) -> tuple[int, ...]:
        return self.plan.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _REFERENCE["on"]:
            from sparseforge.sparsity.backends.dense import DenseExecutor

            return DenseExecutor().forward(self, x)
        if self.training and torch.is_grad_enabled():
            self._pending_dense = None  # training has moved on from any loaded dense weight
            if self.chooser is not None:
                self.chooser(self, x)
        return self.executor.forward(self, x)

    # -- the dense gradient, for update rules that read it ----------------------------------------
    def wants_dense_grad(self) -> bool:
        return self.dense_grad_wanted is not None and bool(self.dense_grad_wanted())

    def add_dense_grad(self, grad: torch.Tensor, owned: bool = False) -> None:
        """Accumulate this backward's dense weight gradient (``owned``: a fresh tensor, kept as is)."""
        grad = grad.detach().reshape(self.plan.shape)
        if self._dense_grad is None:
            self._dense_grad = grad if owned else grad.clone()
        else:  # gradient accumulation: several backwards per optimizer step
            self._dense_grad.add_(grad)

    def dense_grad(self) -> torch.Tensor | None:
        if self._dense_grad is not None:
            return self._dense_grad
        grad = self.values.grad
        return None if grad is None else self.plan.scatter(grad)

    def holds_dense_grad(self, grad: torch.Tensor) -> bool:
        return self._dense_grad is not None and grad is self._dense_grad

    def clear_dense_grad(self) -> None:
        self._dense_grad = None

    # -- SparCL's gradient masks on the values ----------------------------------------------------
    @torch.no_grad()
    def mask_values_grad_(self, grad_mask: torch.Tensor) -> None:
        if self.values.grad is not None:
            self.values.grad.mul_(self.plan.gather(grad_mask).to(self.values.grad.dtype))

    @torch.no_grad()
    def restore_values_(self, grad_mask: torch.Tensor, saved: torch.Tensor) -> None:
        self.values.copy_(torch.where(self.plan.gather(grad_mask), self.values, saved))

    # -- topology changes -------------------------------------------------------------------------
    @torch.no_grad()
    def remap(self, old: torch.Tensor, new: torch.Tensor, grown: torch.Tensor, optimizer) -> None:
        """Move values and per-element optimizer state to the plan of ``new``; grown entries -> 0."""
        start = time.process_time()
        plan = Plan(new)
        kept, where = plan.positions_in(self.plan)
        restart = plan.gather(grown) | ~kept  # new connections (and TDM restarts) start from zero
        self._move_to(plan, _carry(self.values.detach(), where, restart), where, restart, optimizer, start)

    @torch.no_grad()
    def reload(self, mask: torch.Tensor) -> None:
        """A loaded mask: take the values from the loaded dense weight (or the current one)."""
        start = time.process_time()
        source = self._pending_dense if self._pending_dense is not None else self.weight.detach()
        self._pending_dense = None
        plan = Plan(mask)
        kept, where = plan.positions_in(self.plan)
        self._move_to(plan, plan.gather(source).to(self.values.dtype), where, ~kept, self._optimizer(), start)

    def _move_to(self, plan: Plan, values: torch.Tensor, where, restart, optimizer, start: float) -> None:
        if optimizer is not None:
            state = optimizer.state.get(self.values)
            for key, value in list((state or {}).items()):
                if torch.is_tensor(value) and value.shape == self.values.shape and value.dim() == 1:
                    state[key] = _carry(value, where, restart)
        if values.numel() == self.values.numel():
            self.values.copy_(values)
        else:
            if world_size() > 1:
                raise RuntimeError(
                    f"sparsity.backend: layer {self.sparse_name} changes its number of active weights "
                    "(update_rule=tdm); compressed layers cannot change size under DistributedDataParallel: "
                    "use sparsity.backend=masked"
                )
            self.values.data = values
        self.values.grad = None
        self.plan = plan
        self._dense_grad = None
        if self.on_new_plan is not None:
            self.on_new_plan(self, time.process_time() - start)

    def _optimizer(self):
        return self.optimizer_ref() if self.optimizer_ref is not None else None

    # -- checkpoints: the dense weight, as the masked path writes it ------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        values = destination.pop(prefix + "values")
        destination[prefix + "weight"] = self.plan.scatter(values if keep_vars else values.detach())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        key = prefix + "weight"
        if key in state_dict:
            dense = state_dict.pop(key)
            if tuple(dense.shape) != self.plan.shape:
                errors.append(
                    f"size mismatch for {key}: {tuple(dense.shape)} in the checkpoint, {self.plan.shape} here"
                )
            else:
                dense = dense.detach().to(device=self.values.device, dtype=self.values.dtype)
                self._pending_dense = dense.clone()  # the masks may be loaded after the model
                state_dict[prefix + "values"] = self.plan.gather(dense)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)


class CompressedLinear(CompressedWeight, nn.Linear):
    pass


class CompressedConv2d(CompressedWeight, nn.Conv2d):
    pass


COMPRESSIBLE = {nn.Linear: CompressedLinear, nn.Conv2d: CompressedConv2d}


def compress(
    layer: nn.Module,
    name: str,
    mask: torch.Tensor,
    executor,
    dense_grad_wanted: Callable[[], bool] | None = None,
) -> CompressedWeight:
    """Turn an ``nn.Linear``/``nn.Conv2d`` (exact type) into its compressed class, in place."""
    cls = COMPRESSIBLE[type(layer)]
    plan = Plan(mask.to(layer.weight.device))
    weight = layer._parameters["weight"]
    values = nn.Parameter(plan.gather(weight.detach()).clone(), requires_grad=weight.requires_grad)
    layer._parameters = {
        ("values" if k == "weight" else k): (values if k == "weight" else v) for k, v in layer._parameters.items()
    }
    layer.__class__ = cls
    layer.plan = plan
    layer.executor = executor
    layer.sparse_name = name
    layer.chooser = None
    layer.dense_grad_wanted = dense_grad_wanted
    layer.on_new_plan = None
    layer.optimizer_ref = None
    layer._dense_grad = None
    layer._pending_dense = None
    return layer


def decompress(layer: CompressedWeight) -> nn.Module:
    """Back to the plain class with a dense ``weight`` parameter (a new Parameter object)."""
    weight = nn.Parameter(layer.weight.detach().clone(), requires_grad=layer.values.requires_grad)
    layer._parameters = {
        ("weight" if k == "values" else k): (weight if k == "values" else v) for k, v in layer._parameters.items()
    }
    plain = nn.Linear if isinstance(layer, nn.Linear) else nn.Conv2d
    for attr in (
        "plan",
        "executor",
        "sparse_name",
        "chooser",
        "dense_grad_wanted",
        "on_new_plan",
        "optimizer_ref",
        "_dense_grad",
        "_pending_dense",
    ):
        layer.__dict__.pop(attr, None)
    layer.__class__ = plain
    return layer


def _carry(old: torch.Tensor, where: torch.Tensor, restart: torch.Tensor) -> torch.Tensor:
    """``old`` moved to a new plan (``where``: old index of each new entry), zero at ``restart``."""
    if old.numel() == 0:
        return old.new_zeros(where.shape)
    return old[where].masked_fill_(restart, 0)


def set_optimizer(layer: CompressedWeight, optimizer) -> None:
    layer.optimizer_ref = weakref.ref(optimizer) if optimizer is not None else None
