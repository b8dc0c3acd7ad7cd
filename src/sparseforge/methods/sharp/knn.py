"""SHARP's long-term memory (LTM) and its k-nearest-neighbour classifier.

Each class keeps a few penultimate representations and a unit mask: the units that existed
when the class was learned. A query is compared with class ``c`` only inside ``c``'s mask, both
sides L2-normalised there, so each class's distances live in their own subspace (one global
distance matrix would be wrong). The distances of all classes are pooled, the ``k`` smallest
vote, and the majority label wins, ties going to the smallest label.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class LongTermMemory:
    def __init__(self, k: int = 5):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = int(k)
        self.representations: dict[int, torch.Tensor] = {}
        self.unit_masks: dict[int, torch.Tensor] = {}
        self._on_device: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}

    def update(self, label: int, representations: torch.Tensor, unit_mask: torch.Tensor) -> None:
        """Store (overwrite) class ``label``. An empty unit mask means every unit."""
        unit_mask = unit_mask.bool()
        if not bool(unit_mask.any()):
            unit_mask = torch.ones_like(unit_mask)
        self.representations[int(label)] = representations.detach().float().cpu()
        self.unit_masks[int(label)] = unit_mask.cpu()
        self._on_device.clear()

    @property
    def classes(self) -> list[int]:
        return sorted(self.representations)

    @property
    def nbytes(self) -> int:
        return sum(
            r.numel() * r.element_size() + m.numel()
            for r, m in zip(self.representations.values(), self.unit_masks.values(), strict=True)
        )

    def _entries(self, device: torch.device) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Per class: (its mask, its stored representations normalised inside the mask), on
        ``device``, computed once per LTM content."""
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = {
                c: (m.to(device), F.normalize(self.representations[c][:, m], dim=1).to(device))
                for c, m in self.unit_masks.items()
            }
        return self._on_device[key]

    @torch.no_grad()
    def distances(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances from each query to every stored representation (B x N) and their labels."""
        dists, labels = [], []
        entries = self._entries(z.device)
        for c in self.classes:
            mask, stored = entries[c]
            query = F.normalize(z[:, mask].float(), dim=1)
            dists.append(torch.cdist(query, stored, compute_mode="donot_use_mm_for_euclid_dist"))
            labels.append(torch.full((len(stored),), c, dtype=torch.long, device=z.device))
        return torch.cat(dists, 1), torch.cat(labels)

    @torch.no_grad()
    def scores(self, z: torch.Tensor, num_classes: int) -> torch.Tensor:
        """B x num_classes scores whose argmax is the kNN prediction.

        A class's score is its number of votes among the ``k`` nearest (argmax keeps the first
        maximum, i.e. the smallest label on a tie). A class with no vote scores minus half its
        nearest distance, which lies in [-1, 0]: it never beats a voted class, and restricting
        the argmax to a subset of classes (task-IL) still ranks unvoted classes by distance.
        """
        if not self.representations:
            return torch.zeros(len(z), num_classes, device=z.device)
        dist, labels = self.distances(z)
        k = min(self.k, dist.shape[1])
        nearest = dist.topk(k, dim=1, largest=False).indices
        votes = torch.zeros(len(z), num_classes, device=z.device)
        votes.scatter_add_(1, labels[nearest], torch.ones(nearest.shape, device=z.device))
        closest = torch.full((len(z), num_classes), 2.0, device=z.device)
        closest.scatter_reduce_(1, labels.expand(len(z), -1), dist, reduce="amin")
        return torch.where(votes > 0, votes, -closest / 2)

    def predict(self, z: torch.Tensor, num_classes: int) -> torch.Tensor:
        return self.scores(z, num_classes).argmax(1)

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        labels = self.classes
        return {
            "labels": labels,
            "representations": [self.representations[c] for c in labels],
            "unit_masks": [self.unit_masks[c] for c in labels],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.representations = {
            int(c): r.float().cpu() for c, r in zip(state["labels"], state["representations"], strict=True)
        }
        self.unit_masks = {int(c): m.bool().cpu() for c, m in zip(state["labels"], state["unit_masks"], strict=True)}
        self._on_device.clear()
