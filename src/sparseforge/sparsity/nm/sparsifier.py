"""Put N:M parametrizations on the selected layers of a model and drive their schedule.

Usage in plain PyTorch (the Lightning ``NMSparsityCallback`` does the same every batch)::

    sparsifier = NMSparsifier(model, NMSchedule(n=1, m=8, mode="mdgf"), include=["blocks.*.mlp.fc*"])
    for step, (x, y) in enumerate(loader):
        sparsifier.set_position(step, total_steps)
        loss = F.cross_entropy(model(x), y); loss.backward(); opt.step(); opt.zero_grad()

Create the optimizer after the sparsifier: the parametrization moves each weight to
``<layer>.parametrizations.weight.original`` (the same Parameter object, so an optimizer built
before still holds it, but its state-dict key changes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparseforge.errors import ConfigError
from sparseforge.sparsity.nm.mask import GROUP_DIMS, group_counts, nm_mask
from sparseforge.sparsity.nm.schedule import NMSchedule, Phase
from sparseforge.sparsity.nm.weight import NMWeight
from sparseforge.sparsity.targets import select_layers
from sparseforge.utils.distributed import gather, world_size

log = logging.getLogger("sparseforge")

INDIVISIBLE = ("error", "dense")


def nm_parametrization(layer: nn.Module) -> NMWeight | None:
    """The layer's NMWeight parametrization, or None."""
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    found = [p for p in layer.parametrizations.weight if isinstance(p, NMWeight)]
    return found[0] if found else None


def nm_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every layer of ``model`` that carries an N:M parametrization, by name."""
    return {name: mod for name, mod in model.named_modules() if nm_parametrization(mod) is not None}


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """The dense (unmasked) weight of a layer, parametrized or not."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


class NMSparsifier:
    """The N:M state of one model: which layers are sparse, and the shared schedule position.

    ``indivisible``: what to do with a selected layer whose grouped dimension is not divisible
    by the largest group of the schedule (M, or 8M for geometric/densify SdGf). ``error``
    (default) raises a ConfigError naming the layer; ``dense`` leaves it dense, with a warning,
    and lists it in ``dense_by_shape`` (and in summary.json).

    ``sparse_dim``: ``row`` (default) groups M consecutive weights along the input dimension,
    ``col`` along the output dimension (PGF's ``sparse_dim: COL``; see ``mask.py``).
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: NMSchedule,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        dense_first_layer: bool = False,
        dense_last_layer: bool = False,
        indivisible: str = "error",
        config_prefix: str = "sparsity",
        sparse_dim: str = "row",
    ):
        if indivisible not in INDIVISIBLE:
            raise ConfigError(f"{config_prefix}.indivisible", f"unknown value {indivisible!r}", ", ".join(INDIVISIBLE))
        if sparse_dim not in GROUP_DIMS:
            raise ConfigError(f"{config_prefix}.sparse_dim", f"unknown value {sparse_dim!r}", ", ".join(GROUP_DIMS))
        self.model = model
        self.schedule = schedule
        self.sparse_dim, self.group_dim = sparse_dim, GROUP_DIMS[sparse_dim]
        if nm_layers(model):
            raise RuntimeError("this model already carries N:M parametrizations; build one NMSparsifier per model")
        chosen = select_layers(model, include, exclude, dense_first_layer, dense_last_layer, config_prefix)
        group = schedule.largest_group
        self.layers: dict[str, nn.Module] = {}
        self.dense_by_shape: list[str] = []
        for name, layer in chosen.items():
            width = layer.weight.shape[self.group_dim]
            side = "input" if self.group_dim == 1 else "output"
            if width % group:
                why = f"M={schedule.m}" if group == schedule.m else f"8M={group} (the first SdGf stage's group)"
                if indivisible == "error":
                    raise ConfigError(
                        f"{config_prefix}.include",
                        f"layer {name} has {side} dimension {width}, not divisible by {why}",
                        f"exclude it (sparsity.exclude=[{name}]), pick another M, or {config_prefix}.indivisible=dense",
                    )
                log.warning("N:M: layer %s (%s dimension %d, not divisible by %s) stays DENSE", name, side, width, why)
                self.dense_by_shape.append(name)
                continue
            self.layers[name] = layer
        if not self.layers:
            raise ConfigError(f"{config_prefix}.include", "no selected layer has an input dimension divisible by M")
        for layer in self.layers.values():
            # unsafe: skip the trial forward (the position is not set yet); shape and dtype never change
            parametrize.register_parametrization(layer, "weight", NMWeight(schedule, self.group_dim), unsafe=True)

    # -- schedule -------------------------------------------------------------------------------
    def parametrizations(self) -> dict[str, NMWeight]:
        return {name: nm_parametrization(layer) for name, layer in self.layers.items()}

    def set_position(self, clock: int, total: int) -> None:
        """Write the schedule position into every layer's buffers."""
        for p in self.parametrizations().values():
            p.set_position(clock, total)

    def set_loss_scale(self, provider) -> None:
        """``provider() -> tensor`` gives the fp16 GradScaler's current scale (None: no loss scaling)."""
        for p in self.parametrizations().values():
            p.loss_scale = provider

    def position(self) -> tuple[int, int]:
        return next(iter(self.parametrizations().values())).position()

    def phase(self, hard: bool = False) -> Phase:
        return next(iter(self.parametrizations().values())).phase(hard=hard)

    # -- masks ----------------------------------------------------------------------------------
    @torch.no_grad()
    def masks(self, phase: Phase | None = None) -> dict[str, torch.Tensor]:
        """The binary mask of every sparse layer at ``phase`` (default: the current hard phase).

        A pure function of the dense weights, so it is identical on every rank and after a
        resume; during the dense warm-up the masks are all ones.
        """
        phase = phase or self.phase(hard=True)
        out = {}
        for name, layer in self.layers.items():
            w = dense_weight(layer)
            out[name] = (
                torch.ones_like(w, dtype=torch.bool) if phase.dense else nm_mask(w, phase.n, phase.m, self.group_dim)
            )
        return out

    @torch.no_grad()
    def verify(self, check_ranks: bool = True) -> Phase:
        """Check that every sparse layer's hard effective weight is N:M and, under torch.distributed,
        that every rank holds the same masks; raise if not. Returns the (hard) phase."""
        phase = self.phase(hard=True)
        masks = self.masks(phase)
        if check_ranks:
            self._check_ranks_agree(masks)
        if phase.dense:
            return phase
        for name, mask in masks.items():
            counts = group_counts(mask, phase.m, self.group_dim)
            if not bool((counts == phase.n).all()):
                raise RuntimeError(f"N:M mask of {name} does not keep exactly {phase.n} of every {phase.m}")
            effective = dense_weight(self.layers[name]) * mask
            if not bool((group_counts(effective, phase.m, self.group_dim) <= phase.n).all()):
                raise RuntimeError(
                    f"effective weight of {name} has more than {phase.n} nonzeros in a group of {phase.m}"
                )
        return phase

    def _check_ranks_agree(self, masks: dict[str, torch.Tensor]) -> None:
        """Compare a position-weighted fingerprint of every mask across ranks (no-op without DDP)."""
        if world_size() == 1:
            return
        prints = []
        for mask in masks.values():
            flat = mask.flatten().to(torch.int64)
            weights = torch.arange(flat.numel(), device=flat.device, dtype=torch.int64) % 65521 + 1
            prints.append(torch.stack([flat.sum(), (flat * weights).sum()]))
        clock, total = self.position()
        mine = torch.cat([*prints, torch.tensor([clock, total], device=prints[0].device)]).cpu()
        if not all(torch.equal(mine, other) for other in gather(mine)):
            raise RuntimeError("N:M masks or schedule positions differ between DDP ranks")

    @torch.no_grad()
    def layer_stats(self) -> dict[str, dict]:
        """Per sparse layer: shape, pattern in force (hard), and nonzero fraction of the effective weight."""
        phase = self.phase(hard=True)
        stats = {}
        for name, mask in self.masks(phase).items():
            w = dense_weight(self.layers[name])
            nonzero = int(((w * mask) != 0).sum())
            stats[name] = {
                "shape": list(w.shape),
                "pattern": phase.pattern,
                "nonzero": nonzero,
                "numel": w.numel(),
                "density": nonzero / w.numel(),
            }
        return stats

    def state_dict(self) -> dict:
        """The schedule position (also in the model's buffers) and the layer lists, for inspection."""
        clock, total = self.position()
        return {
            "clock": clock,
            "total": total,
            "layers": list(self.layers),
            "dense_by_shape": list(self.dense_by_shape),
        }

    def load_state_dict(self, state: dict) -> None:
        if list(state["layers"]) != list(self.layers):
            raise RuntimeError(f"checkpoint has N:M layers {state['layers']}, this model {list(self.layers)}")
        self.set_position(state["clock"], state["total"])
