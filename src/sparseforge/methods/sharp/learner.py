"""SHARP's algorithm in plain PyTorch: everything except the training loop itself.

:class:`SharpLearner` owns the network's SHARP state (masks, unit ranks, STM, LTM, schedule
position) and exposes the steps the Lightning method calls:

- :meth:`start_phase`: select units by activation mass, drop idle -> active links, regrow into
  idle units (done at the first epoch of every phase; the method then makes a fresh optimizer);
- :meth:`loss`: SupCon over the stream batch plus replayed samples of the recent classes;
- :meth:`before_optimizer_step` / :meth:`after_optimizer_step`: pruned and frozen entries get
  zero gradient, and whatever the optimizer does to them is undone after its step;
- :meth:`end_episode`: promote -> freeze -> STM insert -> re-init idle units -> LTM update;
- :meth:`scores`: kNN votes (or the linear head's logits).

Randomness (growth, re-initialisation, replay draws) comes from generators seeded by
``(seed, episode, phase)``, so every DDP rank and every resumed run makes the same choices.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F

from sparseforge.methods.sharp import rewire, units
from sparseforge.methods.sharp.knn import LongTermMemory
from sparseforge.methods.sharp.memory import ReplayBank, ShortTermMemory
from sparseforge.methods.sharp.supcon import keep_repeated_classes, supcon_loss
from sparseforge.models.sharp import SharpNet
from sparseforge.options import build_options, check
from sparseforge.sparsity.masks import MaskSet

log = logging.getLogger("sparseforge")


class ReplayLayer(str, Enum):
    conv_early = "conv_early"  # hidden-activation replay
    input = "input"  # raw-image replay


class ReinitFanOut(str, Enum):
    idle = "idle"  # Kaiming's fan-out of the idle rows alone, as the authors' code
    layer = "layer"  # the whole layer's fan-out (a fresh initialisation's scale)


class SampleOrder(str, Enum):
    shuffled = "shuffled"  # a seeded random order per episode, as the authors' seed-shuffled streams
    file = "file"  # dataset order: the same samples for every seed


@dataclass
class LearnerOptions:
    """SHARP's algorithm settings; the defaults are the authors' Split-MNIST values."""

    #: Fraction of connections kept in every layer (prune_perc 60).
    density: float = 0.4
    #: The first conv stays dense (skip_first_conv).
    dense_first_conv: bool = True
    #: K of the cosine schedule tau(t) = (1 + cos(pi t / K)) / 2.
    tau_param: float = 30.0
    #: Floor of the activation-mass threshold, in %.
    min_activation_perc: float = 90.0
    #: Training samples of the episode scored for unit selection.
    selection_samples: int = 1024
    #: Short-term memory: samples per class (uint8 activations).
    stm_per_class: int = 25
    #: m: how many previous episodes are replayed.
    stm_num_tasks: int = 1
    #: Long-term memory: representations per class for kNN.
    ltm_per_class: int = 25
    #: k of the kNN classifier.
    knn_k: int = 5
    #: SupCon temperature T.
    temperature: float = 0.1
    #: Re-initialise idle units' incoming weights after each episode.
    reinit_idle: bool = True
    #: Kaiming fan-out of that re-initialisation: idle (n_idle x k^2, the authors'
    #: re_initialize_u0, larger weights when few units are idle) or layer (out x k^2).
    reinit_fan_out: ReinitFanOut = ReinitFanOut.idle
    #: When too few absent links into idle units exist to regrow what was dropped, regrow the rest
    #: into training (rank-1) units from non-idle inputs, so the density stays exact (true). False
    #: is the authors' behaviour: the layer's density drops and a warning is printed.
    regrow_into_training: bool = False
    #: The order of an episode's training samples from which unit scoring takes its first
    #: ``selection_samples`` and the STM/LTM their first samples per class. shuffled: seeded by
    #: (seed, episode), so the subsets change with the seed, as in the authors' code (its streams
    #: are shuffled with the seed); file: dataset order, the same subsets for every seed.
    sample_order: SampleOrder = SampleOrder.shuffled
    replay_layer: ReplayLayer = ReplayLayer.conv_early
    #: L2 term in the loss on masked weights and biases (weight_decay in the authors' scripts).
    l2: float = 0.0
    #: Seeds growth, re-initialisation and replay draws (identical on every DDP rank).
    seed: int = 0

    def __post_init__(self) -> None:
        check("method.density", 0.0 < self.density <= 1.0, f"must be in (0, 1], got {self.density}")
        check("method.tau_param", self.tau_param > 0, f"must be > 0, got {self.tau_param}")
        perc = self.min_activation_perc
        check("method.min_activation_perc", 0 <= perc <= 100, f"must be in [0, 100], got {perc}")
        for key in ("selection_samples", "stm_per_class", "stm_num_tasks", "ltm_per_class", "knn_k"):
            value = getattr(self, key)
            check(f"method.{key}", value >= 1, f"must be >= 1, got {value}")
        check("method.temperature", self.temperature > 0, f"must be > 0, got {self.temperature}")


class SharpLearner:
    def __init__(self, model: SharpNet, options: LearnerOptions | None = None, **values: Any):
        o = self.options = options if options is not None else build_options(LearnerOptions, values, "method")
        density, dense_first_conv, tau_param = o.density, o.dense_first_conv, o.tau_param
        min_activation_perc, selection_samples = o.min_activation_perc, o.selection_samples
        stm_per_class, stm_num_tasks, ltm_per_class, knn_k = o.stm_per_class, o.stm_num_tasks, o.ltm_per_class, o.knn_k
        temperature, reinit_idle, regrow_into_training = o.temperature, o.reinit_idle, o.regrow_into_training
        replay_layer, l2, seed = o.replay_layer.value, o.l2, o.seed
        if not isinstance(model, SharpNet):
            raise TypeError(
                f"SHARP needs a SHARP network (sharp_mnistlike, sharp_vgg_small), got {type(model).__name__}"
            )
        self.model = model
        self.layers = model.weight_layers()
        self._layers_by_name = {layer.name: layer for layer in self.layers}
        self.density = float(density)
        self.tau_param, self.min_activation_perc = float(tau_param), float(min_activation_perc)
        self.selection_samples = int(selection_samples)
        self.stm_num_tasks = int(stm_num_tasks)
        self.ltm_per_class, self.temperature = int(ltm_per_class), float(temperature)
        self.reinit_idle, self.replay_layer, self.l2 = bool(reinit_idle), replay_layer, float(l2)
        self.regrow_into_training = bool(regrow_into_training)
        self.seed = int(seed)
        self.stm = ShortTermMemory(stm_per_class, stm_num_tasks)
        self.ltm = LongTermMemory(knn_k)
        self.ranks = {layer.name: torch.zeros(layer.module.weight.shape[0], dtype=torch.long) for layer in self.layers}
        self.position = {"episode": 0, "phase": 0}  # the last phase started
        self.rewire_log: list[dict[str, Any]] = []
        self.bank: ReplayBank | None = None
        self.bank_episode: int | None = None
        self.last_transient_bytes = 0  # STM size at the end of the last episode, before eviction
        # replayed samples per class in the running episode, and per finished episode
        self.replay_counts = torch.zeros(model.head.out_features, dtype=torch.long)
        self.replayed: dict[int, dict[int, int]] = {}
        self.preprocess_raw: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._frozen: dict[str, torch.Tensor] = {}
        self._frozen_bias: dict[str, torch.Tensor] = {}
        self.masks = self._initial_masks(dense_first_conv)
        self.initial_nnz = self.masks.nnz_per_layer()  # the target every rewiring restores
        self._sync_unit_mask()

    @property
    def activation_replay(self) -> bool:
        return self.replay_layer == "conv_early"

    def generator(self, *keys: int) -> torch.Generator:
        return torch.Generator().manual_seed(hash((self.seed, *keys)) % (2**63))

    def episode_samples(self, episode: int, index: torch.Tensor) -> torch.Tensor:
        """The episode's training positions ``index`` in the order subsets are taken from (see
        ``sample_order``); the same for any order of ``index``, on every rank and after a resume."""
        index = torch.sort(index.cpu()).values
        if self.options.sample_order is SampleOrder.file:
            return index
        return index[torch.randperm(len(index), generator=self.generator(episode, 20_000))]

    # -- connectivity ---------------------------------------------------------------------------------
    def _initial_masks(self, dense_first_conv: bool) -> MaskSet:
        """Bernoulli(density) per weight (linear) or per kernel (conv); the first conv dense."""
        g = self.generator(-1)
        first, masks = self.layers[0], {}
        for layer in self.layers:
            weight = layer.module.weight
            if dense_first_conv and layer is first and layer.is_conv:
                masks[layer.name] = torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
            else:
                masks[layer.name] = rewire.random_mask(weight, self.density, g)
        mask_set = MaskSet({layer.name: layer.module for layer in self.layers}, masks)
        mask_set.apply_()
        return mask_set

    def start_phase(self, episode: int, phase: int, selection_inputs: torch.Tensor) -> dict[str, Any]:
        """Select units (phase ``phase``, 1-based), then drop and regrow connections."""
        percent = units.activation_percent(phase, self.tau_param, self.min_activation_perc)
        scores = self.activation_scores(selection_inputs)
        for layer, score in zip(self.layers, scores, strict=True):
            self.ranks[layer.name] = units.select_units(score.cpu(), self.ranks[layer.name], percent)
        g = self.generator(episode, phase)
        self.masks.follow_weights()
        stats, new_masks, target, previous = {}, {}, {}, None
        for layer in self.layers:
            mask = self.masks[layer.name]
            in_ranks = rewire.input_ranks(layer, previous, mask.shape[1])
            new_masks[layer.name], s = rewire.rewire_layer(
                mask, in_ranks, self.ranks[layer.name], g, self.regrow_into_training
            )
            if s.shortfall:  # the only way a layer's count may change
                log.warning(
                    "SHARP %s: only %d of %d dropped connections could be regrown", layer.name, s.grown, s.dropped
                )
                target[layer.name] = self.masks.target_nnz[layer.name] - s.shortfall * s.elements_per_connection
            stats[layer.name] = {"dropped": s.dropped, "grown": s.grown, "grown_into_training": s.grown_into_training}
            previous = self.ranks[layer.name]
        self.masks.set_masks(new_masks, target_nnz=target)  # new weights start at 0
        self.masks.check()  # exact counts, pruned weights zero
        self._sync_unit_mask()
        self.position = {"episode": int(episode), "phase": int(phase)}
        entry = {"episode": episode, "phase": phase, "percent": percent, "layers": stats}
        self.rewire_log.append(entry)
        return entry

    @torch.no_grad()
    def activation_scores(self, inputs: torch.Tensor, chunk: int = 256) -> list[torch.Tensor]:
        was_training = self.model.training
        self.model.eval()
        try:
            inputs = inputs[: self.selection_samples]
            chunks = (self.model.layer_activations(inputs[i : i + chunk]) for i in range(0, len(inputs), chunk))
            return units.unit_scores(chunks, normaliser=self.selection_samples)
        finally:
            self.model.train(was_training)

    def _sync_unit_mask(self) -> None:
        rep = self.ranks[self.layers[-1].name]
        self.model.unit_mask.copy_((rep != 0).to(self.model.unit_mask))

    # -- freezing -------------------------------------------------------------------------------------
    def update_freeze_masks(self) -> None:
        """Recompute the frozen units from the ranks. Their incoming weights become the mask
        set's gradient masks (zero gradient, any optimizer move undone); biases are handled here."""
        grad_masks, self._frozen = {}, {}
        for layer in self.layers:
            weight = layer.module.weight
            frozen = units.frozen_units(layer, self.ranks[layer.name], self.stm_num_tasks, self.activation_replay)
            if bool(frozen.any()):
                frozen = frozen.to(weight.device)
                self._frozen[layer.name] = frozen
                rows = ~frozen.view(-1, *[1] * (weight.dim() - 1))
                grad_masks[layer.name] = rows.expand_as(weight).contiguous()
        self.masks.set_grad_masks(grad_masks)

    def frozen(self, name: str) -> torch.Tensor:
        """Bool per unit of layer ``name``: frozen or not."""
        return units.frozen_units(self.layer(name), self.ranks[name], self.stm_num_tasks, self.activation_replay)

    def layer(self, name: str):
        return self._layers_by_name[name]

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """After backward, before clipping and ``optimizer.step``: zero the gradients of pruned
        weights and of frozen units' incoming weights and biases; remember the frozen values."""
        self.masks.follow_weights()
        if any(f.device != self.model.unit_mask.device for f in self._frozen.values()):
            self.update_freeze_masks()
        self.masks.before_step()
        self._frozen_bias = {}
        for name, frozen in self._frozen.items():
            bias = self._module(name).bias
            if bias is None:
                continue
            if bias.grad is not None:
                bias.grad[frozen] = 0
            self._frozen_bias[name] = bias.detach()[frozen].clone()

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Undo whatever the optimizer did to frozen entries (momentum and weight decay move
        entries whose gradient is zero) and zero pruned weights again."""
        self.masks.after_step()
        for name, values in self._frozen_bias.items():
            self._module(name).bias[self._frozen[name]] = values
        self._frozen_bias = {}

    def _module(self, name: str):
        return self._layers_by_name[name].module

    # -- replay ---------------------------------------------------------------------------------------
    def to_replay_input(self, label: int, device: torch.device) -> torch.Tensor:
        values = self.stm.decoded(label, device) if self.activation_replay else self.stm.codes[label].to(device)
        return values if self.activation_replay else self.preprocess_raw(values)

    def begin_episode(self, episode: int, device: torch.device) -> None:
        classes = self.stm.replay_classes(episode)
        self.bank = (
            ReplayBank(self.stm, classes, device, decode=lambda c: self.to_replay_input(c, device)) if classes else None
        )
        self.bank_episode = int(episode)

    def replay_representation(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.activation_replay:
            return self.model.represent_from_cutoff(inputs)
        return self.model.represent(inputs)

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, replay_size: int, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """SupCon over [stream; replay] (classes with one stream sample dropped) plus the
        cross-entropy of the linear head on detached representations."""
        keep = keep_repeated_classes(y)
        feats, labels = [self.model.represent(x[keep])], [y[keep]]
        if self.bank is not None and replay_size > 0:
            replay_x, replay_y = self.bank.sample(replay_size, generator)
            if self.replay_counts.device != replay_y.device:
                self.replay_counts = self.replay_counts.to(replay_y.device)
            self.replay_counts += torch.bincount(replay_y, minlength=len(self.replay_counts))
            feats.append(self.replay_representation(replay_x))
            labels.append(replay_y)
        z, labels = torch.cat(feats), torch.cat(labels)
        if len(labels) == 0:
            zero = sum(p.sum() for p in self.model.parameters()) * 0.0
            return zero, {"supcon": zero.detach(), "head_ce": zero.detach()}
        contrastive = supcon_loss(z, labels, self.temperature)
        head_ce = F.cross_entropy(self.model.head(z.detach()), labels)
        total = contrastive + head_ce
        if self.l2:
            total = total + self.l2 * sum(
                (layer.module.weight**2).sum() + (layer.module.bias**2).sum() for layer in self.layers
            )
        return total, {"supcon": contrastive.detach(), "head_ce": head_ce.detach()}

    # -- end of episode ------------------------------------------------------------------------------
    @torch.no_grad()
    def end_episode(
        self,
        episode: int,
        inputs_per_class: Mapping[int, torch.Tensor],
        raw_per_class: Mapping[int, torch.Tensor] | None = None,
    ) -> None:
        """promote -> freeze masks -> STM insert -> re-init idle -> LTM update -> evict.

        ``inputs_per_class``: the first training samples of each class of the episode (in the
        order of :meth:`episode_samples`), preprocessed; ``raw_per_class`` the same as uint8
        (raw-input replay).
        """
        was_training = self.model.training
        self.model.eval()
        counts = self.replay_counts.cpu()
        self.replayed[int(episode)] = {int(c): int(counts[c]) for c in counts.nonzero().flatten()}
        self.replay_counts = torch.zeros_like(counts)
        for name in self.ranks:
            self.ranks[name] = units.promote(self.ranks[name])
        self.update_freeze_masks()
        self._sync_unit_mask()
        for label, x in inputs_per_class.items():
            if self.activation_replay:
                self.stm.insert(episode, label, self.model.cutoff(x[: self.stm.per_class]))
            else:
                self.stm.insert(episode, label, raw_per_class[label], already_quantised=True)
        if self.reinit_idle:
            g = self.generator(episode, 10_000)
            for layer in self.layers:
                units.reinit_idle_units(layer, self.ranks[layer.name], g, self.options.reinit_fan_out.value)
            self.masks.apply_()
        self._update_ltm(episode, inputs_per_class)
        self.last_transient_bytes = self.stm.nbytes
        self.stm.evict_before(episode)
        self.bank, self.bank_episode = None, None
        self.model.train(was_training)

    def _representation_mask(self, min_rank: int) -> torch.Tensor:
        return self.ranks[self.layers[-1].name] >= min_rank

    def _update_ltm(self, episode: int, inputs_per_class: Mapping[int, torch.Tensor]) -> None:
        """Current classes from their first samples; replayed classes from ``ltm_per_class``
        samples drawn at random from the STM (with replacement only when it holds fewer), as the
        authors' ``create_ltm_representations`` / ``get_n_from_classes``."""
        for label, x in inputs_per_class.items():
            z = self.model.represent(x[: self.ltm_per_class])
            self.ltm.update(label, z, self._representation_mask(2))
        device = self.model.unit_mask.device
        g = self.generator(episode, 30_000)
        for age in range(self.stm_num_tasks):
            for label in self.stm.classes_of(episode - 1 - age):
                if label in inputs_per_class:
                    continue  # a recurring class: its fresh entry from this episode wins
                stored = self.to_replay_input(label, device)
                pick = draw(len(stored), self.ltm_per_class, g).to(device)
                z = self.replay_representation(stored[pick])
                self.ltm.update(label, z, self._representation_mask(3 + age))

    # -- prediction -----------------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, x: torch.Tensor, num_classes: int, predict_with: str = "knn") -> torch.Tensor:
        if predict_with == "linear":
            return self.model(x)
        return self.ltm.scores(self.model.represent(x), num_classes)

    # -- accounting -----------------------------------------------------------------------------------
    def unit_counts(self) -> dict[str, dict[str, int]]:
        m = self.stm_num_tasks
        counts = {}
        for name, r in self.ranks.items():
            counts[name] = {
                "idle": int((r == 0).sum()),
                "training": int((r == 1).sum()),
                "fine_tuning": int(((r >= 2) & (r <= m + 1)).sum()),
                "frozen": int((r >= m + 2).sum()),
            }
        return counts

    def densities(self) -> dict[str, float]:
        return self.masks.density_per_layer()

    # -- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "ranks": {k: v.clone() for k, v in self.ranks.items()},
            "masks": self.masks.state_dict(),
            "stm": self.stm.state_dict(),
            "ltm": self.ltm.state_dict(),
            "position": dict(self.position),
            "initial_nnz": dict(self.initial_nnz),
            "rewire_log": list(self.rewire_log),
            "replay_counts": self.replay_counts.cpu().clone(),
            "replayed": {e: dict(c) for e, c in self.replayed.items()},
            "last_transient_bytes": self.last_transient_bytes,
        }

    def load_partial_state(self, state: Mapping[str, Any]) -> None:
        """Ranks and masks only (what a phase start changes)."""
        self.ranks = {k: v.clone().long().cpu() for k, v in state["ranks"].items()}
        self.masks.load_state_dict(state["masks"])
        self.update_freeze_masks()
        self._sync_unit_mask()
        self.masks.apply_()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ranks = {k: v.clone().long().cpu() for k, v in state["ranks"].items()}
        self.masks.load_state_dict(state["masks"])
        self.stm.load_state_dict(state["stm"])
        self.ltm.load_state_dict(state["ltm"])
        self.position = dict(state["position"])
        self.initial_nnz = {k: int(v) for k, v in state["initial_nnz"].items()}
        self.rewire_log = list(state.get("rewire_log", []))
        self.replay_counts = state["replay_counts"].clone().long()
        self.replayed = {int(e): {int(c): int(n) for c, n in d.items()} for e, d in state["replayed"].items()}
        self.last_transient_bytes = int(state["last_transient_bytes"])
        self.update_freeze_masks()
        self._sync_unit_mask()
        self.masks.apply_()


def first_per_class(
    labels: torch.Tensor, index: torch.Tensor, classes: Sequence[int], n: int
) -> dict[int, torch.Tensor]:
    """The first ``n`` positions of ``index`` (in the order given) whose label is each class."""
    lab = labels[index]
    return {int(c): index[lab == c][:n] for c in classes}


def draw(size: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` random positions out of ``size``: without replacement, or with it when ``size < n``."""
    if size >= n:
        return torch.randperm(size, generator=generator)[:n]
    return torch.randint(size, (n,), generator=generator)
