"""``MaskSet``: the masks of a model as one object with state.

One boolean mask per sparse layer weight, keyed by module name. The object

- keeps pruned weights exactly zero: ``mask_grads_()`` before the optimizer step and
  ``apply_()`` after it (in place, one ``torch._foreach_mul_`` over all layers with a copy of each
  mask in the weight's dtype, cached per mask; the bool masks stay the truth). With
  ``cache_factors=False`` no copy is kept: ``torch.where`` on the bool masks, about 4x slower on
  a CPU but with no memory beyond the masks;
- changes topology only through ``set_masks()``, which zeroes new connections, resets their
  optimizer state (every state tensor shaped like the weight: SGD ``momentum_buffer``, Adam/AdamW
  ``exp_avg``/``exp_avg_sq``, ...), records which weights were ever active (ITOP) and checks
  the counts;
- carries optional *gradient masks* (SparCL's DGM): active weights outside their gradient mask
  are frozen for the step, restored after it so momentum and weight decay cannot move them;
- checks its invariants with ``check()`` and round-trips through ``state_dict()``.

Update rules (static, SET, RigL, SparCL's TDM, ...) only decide *which* masks come next; they
hand them to ``set_masks``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

MaskDict = Mapping[str, torch.Tensor]


class MaskInvariantError(AssertionError):
    """A mask or a masked weight is not what it must be (wrong count, non-zero pruned weight)."""


class MaskSet:
    def __init__(
        self,
        layers: Mapping[str, nn.Module],
        masks: MaskDict,
        target_nnz: Mapping[str, int] | None = None,
        cache_factors: bool = True,
    ):
        if set(layers) != set(masks):
            raise ValueError(f"masks for {sorted(masks)} but layers {sorted(layers)}")
        self.layers = dict(layers)
        self.masks: dict[str, torch.Tensor] = {}
        for name in self.layers:
            weight = self.weight(name)
            mask = masks[name]
            if mask.shape != weight.shape:
                raise ValueError(f"mask of {name!r} has shape {tuple(mask.shape)}, weight {tuple(weight.shape)}")
            self.masks[name] = mask.to(device=weight.device, dtype=torch.bool).clone()
        self.fired = {name: m.clone() for name, m in self.masks.items()}
        self.target_nnz = dict(target_nnz) if target_nnz is not None else self.nnz_per_layer()
        self.grad_masks: dict[str, torch.Tensor] = {}
        self._frozen: dict[str, torch.Tensor] = {}
        self.version = 0  # bumped on every topology change (caches key on it)
        # Layers whose trainable tensor is the vector of active values (a sparse execution
        # backend, ``sparsity.backends``): they hold no pruned entries, so the dense masking
        # passes skip them and topology changes are handed to them (``remap``/``reload``).
        self.compressed: dict[str, Any] = {}
        # (kind, layer) -> (the mask it copies, (its version, dtype, device), the copy); kept only
        # with cache_factors (speed for memory: 4 bytes per sparse weight in fp32)
        self.cache_factors = bool(cache_factors)
        self._factors: dict[tuple[str, str], tuple[torch.Tensor, tuple, torch.Tensor]] = {}
        self._factors_paused_at: int | None = None  # the mask version whose copies are not kept

    # -- access --------------------------------------------------------------------------------------
    def weight(self, name: str) -> nn.Parameter:
        return self.layers[name].weight

    def __iter__(self) -> Iterator[str]:
        return iter(self.masks)

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.masks[name]

    def numel(self, name: str) -> int:
        return self.masks[name].numel()

    def nnz_per_layer(self) -> dict[str, int]:
        return {name: int(mask.count_nonzero()) for name, mask in self.masks.items()}

    def density_per_layer(self) -> dict[str, float]:
        return {name: n / self.numel(name) for name, n in self.nnz_per_layer().items()}

    def global_density(self) -> float:
        return sum(self.nnz_per_layer().values()) / sum(self.numel(n) for n in self.masks)

    def itop(self) -> float:
        """In-time over-parameterisation: the fraction of sparse-layer weights ever active."""
        return sum(int(f.count_nonzero()) for f in self.fired.values()) / sum(self.numel(n) for n in self.masks)

    def to(self, device: torch.device | str) -> MaskSet:
        for store in (self.masks, self.fired, self.grad_masks):
            for name in store:
                store[name] = store[name].to(device)
        return self

    def follow_weights(self) -> None:
        """Move masks to their weights' devices (after the trainer moved the model)."""
        for name in self.masks:
            layer = self.compressed.get(name)
            device = layer.values.device if layer is not None else self.weight(name).device
            if self.masks[name].device != device:
                self.to(device)
                return

    # -- keeping pruned weights at zero --------------------------------------------------------------
    def factor(self, name: str, mask: torch.Tensor | None = None, kind: str = "mask") -> torch.Tensor:
        """``mask`` (default: the layer's weight mask) as 0/1 in the weight's dtype, cached.

        ``float.mul_(float)`` runs about 8x faster on the CPU than ``float.mul_(uint8)`` or
        ``float.mul_(bool)`` (which go through a casting path). The copy is rebuilt when the
        mask tensor is replaced (``set_masks``, ``load_state_dict``) or changed in place; its
        bytes are reported by ``factor_cache_bytes``.
        """
        mask = self.masks[name] if mask is None else mask
        weight = self.layers[name].weight if name not in self.compressed else None
        dtype = weight.dtype if weight is not None else torch.float32
        cached = self._factors.get((kind, name))
        if cached is None or cached[0] is not mask or cached[1] != (mask._version, dtype, mask.device):
            cached = (mask, (mask._version, dtype, mask.device), mask.to(dtype))
            self._factors[(kind, name)] = cached
        return cached[2]

    def forget_factors(self, name: str) -> None:
        """Drop the cached mask copies of a layer (it became compressed: nothing to multiply)."""
        for kind in ("mask", "grad"):
            self._factors.pop((kind, name), None)

    def pause_factor_cache(self) -> None:
        """Free the weight masks' copies and mask with the bool masks until the next topology change.

        For the step before an update: the rule's scores (as large as the weights) live across the
        optimizer step then, and the copies of the outgoing masks would be rebuilt after the change
        anyway. Costs that one step the slower masking; the result is the same (zeros are +0.0).
        """
        for key in [key for key in self._factors if key[0] == "mask"]:
            del self._factors[key]
        self._factors_paused_at = self.version

    def factor_cache_bytes(self) -> int:
        """Memory held by the cached mask copies (on top of the 1-byte bool masks)."""
        return sum(t.numel() * t.element_size() for _, _, t in self._factors.values())

    def _dense_names(self) -> list[str]:
        return [name for name in self.masks if name not in self.compressed]

    def _zero_outside_(
        self, tensors: list[torch.Tensor], names: list[str], kind: str = "mask", masks=None, cached: bool = True
    ) -> None:
        """``tensors[i]`` zeroed, in place, where the mask of ``names[i]`` is False."""
        masks = [self.masks[n] for n in names] if masks is None else masks
        paused = kind == "mask" and self._factors_paused_at == self.version
        if cached and self.cache_factors and not paused:
            factors = [self.factor(n, mask, kind) for n, mask in zip(names, masks, strict=True)]
            torch._foreach_mul_(tensors, factors)
            return
        for tensor, mask in zip(tensors, masks, strict=True):
            # where() reads the bool mask directly (multiplying by it goes through a slower casting
            # path); the output may be its own input: one pass, no temporary
            torch.where(mask, tensor, tensor.new_zeros(()), out=tensor)

    @torch.no_grad()
    def apply_(self, keep_copies: bool = True) -> None:
        """Zero every pruned weight, in place (compressed layers hold no pruned entries).

        ``keep_copies=False``: through the bool masks, building no float copies (a one-off pass)."""
        names = self._dense_names()
        if names:
            self._zero_outside_([self.weight(n) for n in names], names, cached=keep_copies)

    @torch.no_grad()
    def mask_grads_(self, pruned: bool = True) -> None:
        """Zero the gradients of pruned weights (and, with gradient masks, of frozen ones).

        ``pruned=False`` leaves the gradients of pruned weights to the optimizer, so its state
        (momentum, Adam's moments) follows the dense gradient there, which momentum-based growth
        reads; ``after_step`` zeroes those weights again either way."""
        names = [n for n in self._dense_names() if pruned and self.weight(n).grad is not None]
        if names:
            self._zero_outside_([self.weight(n).grad for n in names], names)
        for name, gmask in self.grad_masks.items():
            if name in self.compressed:
                self.compressed[name].mask_values_grad_(gmask)
                continue
            grad = self.weight(name).grad
            if grad is not None:
                self._zero_outside_([grad], [name], kind="grad", masks=[gmask])

    @torch.no_grad()
    def active_weights(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat positions of the active weights, ascending; their values), without a dense copy
        for compressed layers."""
        if name in self.compressed:
            layer = self.compressed[name]
            return layer.plan.idx, layer.values.detach()
        positions = self.masks[name].reshape(-1).nonzero().squeeze(1)
        return positions, self.weight(name).detach().reshape(-1)[positions]

    def grad(self, name: str) -> torch.Tensor | None:
        """The layer's dense weight gradient (what the update rules read), or None.

        For a compressed layer: the dense gradient its backward computed on a step that needed
        it, else its active-value gradient scattered into a zero tensor.
        """
        if name in self.compressed:
            return self.compressed[name].dense_grad()
        return self.weight(name).grad

    def grad_is_scratch(self, name: str, grad: torch.Tensor | None) -> bool:
        """Whether ``grad`` is a compressed layer's dense gradient of this step, which an update rule
        may overwrite in place: the optimizer trains on the active values' own gradient and the
        dense one is released once the rule has read it (a masked layer's ``.grad`` never is)."""
        layer = self.compressed.get(name)
        return layer is not None and grad is not None and layer.holds_dense_grad(grad)

    @torch.no_grad()
    def before_step(self, mask_pruned: bool = True) -> None:
        """Call after backward (and AMP unscaling), before ``optimizer.step()``."""
        self.mask_grads_(pruned=mask_pruned)
        self._frozen = {
            name: (self.compressed[name].values if name in self.compressed else self.weight(name)).detach().clone()
            for name in self.grad_masks
        }

    @torch.no_grad()
    def after_step(self) -> None:
        """Call after ``optimizer.step()``: undo any move of frozen weights, zero pruned weights."""
        for name, saved in self._frozen.items():
            if name in self.compressed:
                self.compressed[name].restore_values_(self.grad_masks[name], saved)
                continue
            weight = self.weight(name)
            weight.copy_(torch.where(self.grad_masks[name], weight, saved))
        self._frozen = {}
        self.apply_()

    def set_grad_masks(self, grad_masks: MaskDict) -> None:
        """Extra per-layer gradient masks (True = may move this step). Replaces the previous ones."""
        unknown = set(grad_masks) - set(self.masks)
        if unknown:
            raise KeyError(f"gradient masks for layers without a weight mask: {sorted(unknown)}")
        self.grad_masks = {
            name: m.to(device=self.masks[name].device, dtype=torch.bool) for name, m in grad_masks.items()
        }

    def clear_grad_masks(self) -> None:
        self.grad_masks = {}

    # -- topology changes ----------------------------------------------------------------------------
    @torch.no_grad()
    def set_masks(
        self,
        new_masks: MaskDict,
        optimizer: torch.optim.Optimizer | None = None,
        target_nnz: Mapping[str, int] | None = None,
        restart: MaskDict | None = None,
    ) -> dict[str, dict[str, int]]:
        """Switch to ``new_masks`` (a subset of layers is fine). Returns per-layer drop/grow counts.

        New connections start at weight 0 with zeroed optimizer state; dropped weights become 0.
        ``restart`` marks weights active before and after that restart the same way (dropped and
        regrown in one update, e.g. SparCL's TDM); they count as dropped and grown.
        Unless ``target_nnz`` gives new counts for a layer, its count must stay the same.
        """
        stats: dict[str, dict[str, int]] = {}
        for name, new in new_masks.items():
            old = self.masks[name]
            new = new.to(device=old.device, dtype=torch.bool)
            if new.shape != old.shape:
                raise ValueError(f"new mask of {name!r} has shape {tuple(new.shape)}, expected {tuple(old.shape)}")
            grown = new & ~old
            dropped = old & ~new
            if restart is not None and name in restart:
                again = restart[name].to(device=old.device, dtype=torch.bool) & old & new
                grown, dropped = grown | again, dropped | again
            if name in self.compressed:  # values and optimizer state move to the new positions
                self.compressed[name].remap(old, new, grown, optimizer)
            else:
                weight = self.weight(name)
                weight.masked_fill_(grown, 0.0)
                if optimizer is not None:
                    reset_optimizer_state(optimizer, weight, grown)
            self.masks[name] = new
            self.fired[name] |= new
            if target_nnz is not None and name in target_nnz:
                self.target_nnz[name] = int(target_nnz[name])
            stats[name] = {"grown": int(grown.count_nonzero()), "dropped": int(dropped.count_nonzero())}
        self.version += 1
        self.apply_()
        return stats

    # -- invariants ----------------------------------------------------------------------------------
    @torch.no_grad()
    def check(self, weights: bool = True) -> None:
        """Raise MaskInvariantError naming the first layer whose count or pruned weights are wrong."""
        for name, mask in self.masks.items():
            nnz = int(mask.count_nonzero())
            if nnz != self.target_nnz[name]:
                raise MaskInvariantError(
                    f"layer {name!r}: mask has {nnz} non-zeros, expected exactly {self.target_nnz[name]} "
                    f"(of {mask.numel()})"
                )
            if weights and name not in self.compressed:  # a compressed layer has no pruned entries to hold
                weight = self.weight(name).detach()
                stray = int(weight.ne(0).logical_and_(~mask).count_nonzero())
                if stray:
                    # masking multiplies by 0, and NaN x 0 is NaN: name divergence as the cause
                    diverged = int(weight.isfinite().logical_not_().logical_and_(~mask).count_nonzero())
                    why = f" ({diverged} NaN or infinite: the weights diverged)" if diverged else ""
                    raise MaskInvariantError(f"layer {name!r}: {stray} pruned weights are not zero{why}")

    def fingerprint(self) -> torch.Tensor:
        """One int64 per layer that differs between (almost all) different masks: for cross-rank checks."""
        values = []
        for mask in self.masks.values():
            flat = mask.flatten()
            index = torch.arange(flat.numel(), device=flat.device, dtype=torch.int64)
            values.append(((index * 2654435761 + 97) % 2147483647 * flat).sum())
        return torch.stack(values)

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "masks": {n: m.detach().cpu().clone() for n, m in self.masks.items()},
            "fired": {n: m.detach().cpu().clone() for n, m in self.fired.items()},
            "grad_masks": {n: m.detach().cpu().clone() for n, m in self.grad_masks.items()},
            "target_nnz": dict(self.target_nnz),
            "version": self.version,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = set(state["masks"])
        if saved != set(self.masks):
            missing, extra = sorted(set(self.masks) - saved), sorted(saved - set(self.masks))
            raise ValueError(
                f"checkpoint masks do not match this model's sparse layers (missing {missing}, unexpected {extra}); "
                "was it written with other sparsity.include/exclude/dense_* options?"
            )
        for name in self.masks:
            device = self.masks[name].device
            mask = state["masks"][name]
            if mask.shape != self.masks[name].shape:
                raise ValueError(f"checkpoint mask of {name!r} has shape {tuple(mask.shape)}")
            if name in self.compressed:  # the values follow the loaded mask
                self.compressed[name].reload(mask.to(device=device, dtype=torch.bool))
            self.masks[name] = mask.to(device=device, dtype=torch.bool).clone()
            self.fired[name] = state["fired"][name].to(device=device, dtype=torch.bool).clone()
        self.grad_masks = {n: m.to(self.masks[n].device, torch.bool) for n, m in state.get("grad_masks", {}).items()}
        self.target_nnz = {n: int(v) for n, v in state["target_nnz"].items()}
        self.version = int(state.get("version", 0)) + 1
        self._factors_paused_at = None  # new masks: their copies are kept again


@torch.no_grad()
def reset_optimizer_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, positions: torch.Tensor) -> None:
    """Zero ``optimizer``'s per-element state of ``param`` at ``positions`` (any optimizer)."""
    state = optimizer.state.get(param)
    if not state:
        return
    for value in state.values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value.masked_fill_(positions.to(value.device), 0)
