"""SHARP's kNN over the long-term memory, and its SupCon loss."""

from __future__ import annotations

import math

import pytest
import torch

from sparseforge.methods.sharp.knn import LongTermMemory
from sparseforge.methods.sharp.supcon import keep_repeated_classes, supcon_loss


def _memory(k: int) -> LongTermMemory:
    """Class 0 lives on units {0, 1}, class 1 on units {2, 3}; the other units hold junk that a
    single global distance would be dominated by."""
    ltm = LongTermMemory(k=k)
    ltm.update(0, torch.tensor([[1.0, 0.0, 50.0, 50.0], [1.0, 0.2, -40.0, 9.0]]), torch.tensor([1, 1, 0, 0]))
    ltm.update(1, torch.tensor([[70.0, 3.0, 1.0, 0.0], [-9.0, 8.0, 0.0, 1.0]]), torch.tensor([0, 0, 1, 1]))
    return ltm


def test_distances_are_taken_inside_each_class_mask_after_renormalising():
    ltm = _memory(k=3)
    z = torch.tensor([[3.0, 0.0, 3.0, 0.5]])
    dist, labels = ltm.distances(z)
    assert labels.tolist() == [0, 0, 1, 1]
    # by hand: class 0 sees z -> (1, 0); its entries (1, 0) and (1, .2)/|.|
    b = torch.tensor([1.0, 0.2]) / math.hypot(1.0, 0.2)
    # class 1 sees z -> (3, .5)/|.|; its entries (1, 0) and (0, 1)
    q1 = torch.tensor([3.0, 0.5]) / math.hypot(3.0, 0.5)
    expected = [
        0.0,
        float((torch.tensor([1.0, 0.0]) - b).norm()),
        float((q1 - torch.tensor([1.0, 0.0])).norm()),
        float((q1 - torch.tensor([0.0, 1.0])).norm()),
    ]
    assert dist[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_majority_of_the_k_nearest_wins_and_ties_go_to_the_smallest_label():
    z = torch.tensor([[3.0, 0.4, 3.0, 0.0]])
    # by hand: class 1's first entry is at distance 0, class 0's entries at .065 and .132,
    # class 1's second at 1.41
    assert _memory(k=1).predict(z, 2).tolist() == [1]
    assert _memory(k=2).predict(z, 2).tolist() == [0]  # one vote each: the smaller label
    assert _memory(k=3).predict(z, 2).tolist() == [0]  # two votes for class 0
    assert _memory(k=4).predict(z, 2).tolist() == [0]  # 2 : 2 again


def test_scores_are_votes_and_unvoted_classes_rank_below_by_distance():
    ltm = _memory(k=1)
    ltm.update(2, torch.tensor([[0.0, 1.0, 0.0, 0.0]]), torch.tensor([1, 1, 0, 0]))
    z = torch.tensor([[3.0, 0.4, 3.0, 0.0]])
    scores = ltm.scores(z, num_classes=4)
    assert scores[0, 1] == 1.0  # the single vote
    assert -1.0 <= scores[0, 0] < 0 and -1.0 <= scores[0, 2] < 0
    assert scores[0, 0] > scores[0, 2]  # class 0 is nearer than class 2 inside their masks
    assert scores[0, 3] == -1.0  # a class with no entry at all ranks last
    assert scores[:, [0, 2]].argmax(1).tolist() == [0]  # restricted (task-IL) argmax


def test_empty_unit_mask_means_all_units_and_state_round_trips():
    ltm = LongTermMemory(k=1)
    ltm.update(5, torch.ones(2, 3), torch.zeros(3, dtype=torch.bool))
    assert ltm.unit_masks[5].all()
    other = LongTermMemory(k=1)
    other.load_state_dict(ltm.state_dict())
    assert other.classes == [5] and torch.equal(other.representations[5], ltm.representations[5])


def _supcon_by_definition(z, y, t):
    z = torch.nn.functional.normalize(z, dim=1)
    losses = []
    for i in range(len(y)):
        others = [a for a in range(len(y)) if a != i]
        positives = [p for p in others if y[p] == y[i]]
        if not positives:
            continue
        log_den = math.log(sum(math.exp(float(z[i] @ z[a]) / t) for a in others))
        losses.append(-sum(float(z[i] @ z[p]) / t - log_den for p in positives) / len(positives))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5])
def test_supcon_matches_its_definition(temperature):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 6, generator=g)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 0, 1, 2, 5])  # class 5 has no positive
    assert supcon_loss(z, y, temperature).item() == pytest.approx(_supcon_by_definition(z, y, temperature), rel=1e-4)


def test_classes_with_a_single_sample_are_filtered():
    y = torch.tensor([4, 1, 4, 7, 1, 1])
    assert keep_repeated_classes(y).tolist() == [True, True, True, False, True, True]
