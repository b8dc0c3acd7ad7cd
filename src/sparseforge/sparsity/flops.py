"""Dense forward FLOPs per layer, measured with ``torch.utils.flop_counter.FlopCounterMode``.

Convention: FLOPs = 2 x multiply-accumulates (what FlopCounterMode reports), for one example
(batch size 1). Sparse and training FLOPs are derived from these numbers; see the README.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def forward_flops_per_module(model: nn.Module, example: torch.Tensor) -> tuple[int, dict[str, int]]:
    """(total forward FLOPs of the model, FLOPs of each named submodule) for ``example`` (batch 1)."""
    from sparseforge.sparsity.backends.layers import reference_forward

    was_training = model.training
    model.eval()
    try:  # compressed layers count as the dense layers they stand for
        with FlopCounterMode(display=False) as counter, reference_forward():
            model(example)
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    total = int(sum(counts.get("Global", {}).values()))
    per_module: dict[str, int] = {}
    for key, ops in counts.items():
        if key == "Global" or "." not in key:
            continue
        per_module[key.split(".", 1)[1]] = int(sum(ops.values()))
    return total, per_module


def layer_forward_flops(model: nn.Module, example: torch.Tensor, layer_names) -> dict[str, int]:
    """Dense forward FLOPs of each named layer, for one example."""
    _, per_module = forward_flops_per_module(model, example)
    return {name: per_module.get(name, 0) for name in layer_names}


# -- training FLOPs actually spent ----------------------------------------------------------------
def dense_train_flops_per_step(f_dense: float) -> float:
    """Dense training: forward + backward (input and weight gradients, each ~ a forward)."""
    return 3 * f_dense


def static_train_flops_per_step(f_sparse: float) -> float:
    return 3 * f_sparse


def rigl_train_flops_per_step(f_sparse: float, f_dense: float, delta_t: int) -> float:
    """The RigL paper's closed form, (3·f_s·ΔT + 2·f_s + f_d) / (ΔT + 1), for comparison."""
    return (3 * f_sparse * delta_t + 2 * f_sparse + f_dense) / (delta_t + 1)


def _first_tensor(args) -> torch.Tensor | None:
    for a in args:
        if torch.is_tensor(a):
            return a
        if isinstance(a, (list, tuple)):
            found = _first_tensor(a)
            if found is not None:
                return found
    return None


class FlopsAccountant:
    """Counts the training FLOPs a run really spends, one optimizer step at a time.

    A forward pre-hook on ``model`` counts the examples it really processes while in training
    mode: with gradients enabled an example costs forward + backward, under ``no_grad`` a
    forward only (so DER++, which forwards the batch and two buffer draws, is charged for all three).
    Evaluation forwards (``model.eval()``) are not training FLOPs and are not counted.

    ``step(layer_density, weight_grad_density)`` then charges the examples seen since the last
    step, per example:

    - forward = f_other + Σ_l f_l · d_l   (f_l: dense FLOPs of sparse layer l, d_l: its density;
      f_other: everything FlopCounterMode counts outside the sparse layers, kept dense);
    - backward, input gradients = the forward;
    - backward, weight gradients = f_other + Σ_l f_l · g_l, where g_l defaults to d_l and is 1 on
      steps that need the dense gradient (RigL updates) or a gradient density (SparCL's DGM).

    The dense reference charges 3·f_d per trained example and f_d per forward-only example. A
    method that deliberately skips examples a dense run of it would process (SparCL's data
    removal, replay it leaves out) reports them with ``charge_reference_only``: they enter the
    dense reference, not the spent FLOPs, so the ratio is against the counterfactual dense run.
    Dense FLOPs come from FlopCounterMode on one example (batch 1; FLOPs = 2 x MACs), measured
    the first time a step is charged, from the shape of the first training input seen.
    """

    def __init__(self, model: nn.Module, layer_names=(), example_input: torch.Tensor | None = None):
        self.model = model
        self.layer_names = list(layer_names)
        self.f_dense: float | None = None
        self.f_layer: dict[str, float] = {}
        self._example = example_input
        self.pending_train = 0
        self.pending_forward_only = 0
        self.train_total = 0.0
        self.dense_total = 0.0
        self.steps = 0
        self.samples_trained = 0
        self.samples_forward_only = 0
        self.samples_reference_only = 0
        self._hook = model.register_forward_pre_hook(self._count)

    def _count(self, module: nn.Module, args) -> None:
        if not module.training:
            return
        x = _first_tensor(args)
        if x is None or x.dim() == 0:
            return
        if self._example is None:
            self._example = torch.zeros((1, *x.shape[1:]), dtype=x.dtype, device=x.device)
        if torch.is_grad_enabled():
            self.pending_train += x.shape[0]
        else:
            self.pending_forward_only += x.shape[0]

    def measure(self) -> None:
        if self.f_dense is not None:
            return
        if self._example is None:
            raise RuntimeError("FlopsAccountant: no training forward seen yet and no example_input given")
        total, per_module = forward_flops_per_module(self.model, self._example)
        self.f_dense = float(total)
        self.f_layer = {name: float(per_module.get(name, 0)) for name in self.layer_names}

    def forward_flops(self, layer_density=None) -> float:
        """Forward FLOPs of one example at these layer densities (missing layers: dense)."""
        self.measure()
        if not layer_density:  # dense (at every step of a dense run): nothing to subtract
            return self.f_dense
        return self.f_dense - sum(f * (1.0 - layer_density.get(n, 1.0)) for n, f in self.f_layer.items())

    def step(self, layer_density=None, weight_grad_density=None) -> float:
        """Charge the examples counted since the last step; returns this step's FLOPs."""
        n_train, n_fwd = self.pending_train, self.pending_forward_only
        self.pending_train = self.pending_forward_only = 0
        self.steps += 1
        if n_train == 0 and n_fwd == 0:
            return 0.0
        forward = self.forward_flops(layer_density)
        weight_grad = self.forward_flops(weight_grad_density if weight_grad_density is not None else layer_density)
        spent = n_train * (2 * forward + weight_grad) + n_fwd * forward
        self.train_total += spent
        self.dense_total += n_train * 3 * self.f_dense + n_fwd * self.f_dense
        self.samples_trained += n_train
        self.samples_forward_only += n_fwd
        return spent

    def charge_reference_only(self, n_train: int, n_forward_only: int = 0) -> None:
        """Examples the dense reference run trains on (or only forwards) but this run skips."""
        if n_train <= 0 and n_forward_only <= 0:
            return
        self.measure()
        self.dense_total += max(n_train, 0) * 3 * self.f_dense + max(n_forward_only, 0) * self.f_dense
        self.samples_reference_only += max(n_train, 0) + max(n_forward_only, 0)

    @property
    def train_relative_to_dense(self) -> float | None:
        return self.train_total / self.dense_total if self.dense_total else None

    def close(self) -> None:
        self._hook.remove()

    def state_dict(self) -> dict[str, float | int]:
        return {
            "train_total": self.train_total,
            "dense_total": self.dense_total,
            "steps": self.steps,
            "samples_trained": self.samples_trained,
            "samples_forward_only": self.samples_forward_only,
            "samples_reference_only": self.samples_reference_only,
            # the per-example FLOPs, so that a run resumed from its final checkpoint (nothing left to
            # train, no forward to measure on) still reports them
            "f_dense": self.f_dense,
            "f_layer": dict(self.f_layer),
        }

    def load_state_dict(self, state) -> None:
        self.train_total = float(state["train_total"])
        self.dense_total = float(state["dense_total"])
        self.steps = int(state["steps"])
        self.samples_trained = int(state.get("samples_trained", 0))
        self.samples_forward_only = int(state.get("samples_forward_only", 0))
        self.samples_reference_only = int(state.get("samples_reference_only", 0))
        if state.get("f_dense") is not None:
            self.f_dense = float(state["f_dense"])
            self.f_layer = {name: float(f) for name, f in state["f_layer"].items()}


class LayerFlopsMeter:
    """Training FLOPs counted where they are spent: at each weight layer, for the examples that
    really pass through it.

    ``FlopsAccountant`` charges whole-model forwards. A method whose forwards start or stop inside
    the model (SHARP replays stored hidden activations into the layers above the cut-off only)
    needs this finer count. Per example and layer l, with f_l its dense forward FLOPs for one
    example (FlopCounterMode on the layer and its real input shape) and d_l its density:

    - forward: f_l · d_l;
    - with autograd recording (training): + f_l · d_l for the weight gradient, and + f_l · d_l for
      the input gradient only when the input requires one (not for the first layer, nor for a
      head fed detached features).

    Forwards in eval mode (evaluation, kNN prediction) are not training FLOPs and are not counted.
    The dense reference charges the same examples with d_l = 1. ``densities`` is the caller's to
    keep current (a dict name -> density; missing layers count as dense).
    """

    def __init__(self, layers: dict[str, nn.Module]):
        self.densities: dict[str, float] = {}
        self.f_layer: dict[str, float] = {}
        self.train_total = 0.0
        self.dense_total = 0.0
        self._measuring = False
        self._hooks = [m.register_forward_hook(self._hook_for(name)) for name, m in layers.items()]

    def _hook_for(self, name: str):
        def hook(module: nn.Module, args, output) -> None:
            if self._measuring or not module.training:
                return
            x = _first_tensor(args)
            if x is None or x.dim() == 0:
                return
            f = self.f_layer.get(name)
            if f is None:
                f = self.f_layer[name] = self._measure(module, x)
            passes = 1
            if torch.is_grad_enabled():
                passes += int(any(p.requires_grad for p in module.parameters())) + int(x.requires_grad)
            n = x.shape[0] * passes
            self.train_total += n * f * self.densities.get(name, 1.0)
            self.dense_total += n * f

        return hook

    def _measure(self, module: nn.Module, x: torch.Tensor) -> float:
        self._measuring = True
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                module(x[:1].detach())
        finally:
            self._measuring = False
        return float(counter.get_total_flops())

    @property
    def train_relative_to_dense(self) -> float | None:
        return self.train_total / self.dense_total if self.dense_total else None

    def inference_relative_to_dense(self, names=None) -> float | None:
        """One forward through ``names`` (default: every layer measured so far) vs dense."""
        names = list(self.f_layer if names is None else names)
        dense = sum(self.f_layer.get(n, 0.0) for n in names)
        sparse = sum(self.f_layer.get(n, 0.0) * self.densities.get(n, 1.0) for n in names)
        return sparse / dense if dense else None

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()

    def state_dict(self) -> dict[str, Any]:
        return {"train_total": self.train_total, "dense_total": self.dense_total, "f_layer": dict(self.f_layer)}

    def load_state_dict(self, state) -> None:
        self.train_total = float(state["train_total"])
        self.dense_total = float(state["dense_total"])
        self.f_layer.update({name: float(f) for name, f in state.get("f_layer", {}).items()})
