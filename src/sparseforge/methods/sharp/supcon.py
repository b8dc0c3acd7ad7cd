"""Supervised contrastive loss (Khosla et al., 2020) with one view per sample, as SHARP uses it.

With z normalised, s_ij = z_i . z_j / T; for anchor i with positives P(i) (same label, not i)
and A(i) = every other sample:

    l_i = -1/|P(i)| sum_{p in P(i)} [ s_ip - log sum_{a in A(i)} exp(s_ia) ]

The loss is the mean over anchors. An anchor without a positive has no term; callers drop
classes with a single sample first (``keep_repeated_classes``), as the authors' code does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def keep_repeated_classes(labels: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the samples whose class occurs at least twice in ``labels``."""
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    return counts[inverse] > 1


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    # float32 even under mixed precision: logits of 1/T = 20 in bf16 lose the differences that matter
    with torch.autocast(features.device.type, enabled=False):
        return _supcon(features.float(), labels, temperature)


def _supcon(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    z = F.normalize(features, dim=1)
    logits = z @ z.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    n = len(labels)
    not_self = ~torch.eye(n, dtype=torch.bool, device=z.device)
    positives = (labels.view(-1, 1) == labels.view(1, -1)) & not_self
    log_denominator = torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - log_denominator
    n_pos = positives.sum(1)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return features.sum() * 0.0
    per_anchor = -(log_prob * positives).sum(1)[has_pos] / n_pos[has_pos]
    return per_anchor.mean()
