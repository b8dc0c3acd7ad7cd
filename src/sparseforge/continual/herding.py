"""Herding (Welling 2009), the exemplar selection of iCaRL (Rebuffi et al. 2017, Algorithm 4).

Given the feature vectors of a class's examples, the k-th exemplar is the example that brings
the mean of the exemplars chosen so far closest to the mean of all the class's examples. The
order matters: the first m exemplars of the order are the best m-subset found this way, so a
memory that shrinks keeps a prefix (iCaRL's ReduceExemplarSet).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def herding_order(features: torch.Tensor, m: int) -> torch.Tensor:
    """The positions of ``min(m, n)`` rows of ``features`` (n x d), in herding order."""
    n = features.shape[0]
    features = features.double()  # the running means differ little: keep ties rare and exact
    target = features.mean(0)
    chosen = torch.empty(min(m, n), dtype=torch.long)
    total = torch.zeros_like(target)
    taken = torch.zeros(n, dtype=torch.bool, device=features.device)
    for k in range(len(chosen)):
        distance = (target - (total + features) / (k + 1)).norm(dim=1).masked_fill(taken, float("inf"))
        pick = int(distance.argmin())
        chosen[k] = pick
        taken[pick] = True
        total += features[pick]
    return chosen
