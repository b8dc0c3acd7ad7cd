"""SHARP's sample subsets follow the seed, as the authors' seed-shuffled streams do: unit scoring's
first samples, the STM/LTM's first samples per class, and the LTM entries of replayed classes
(drawn at random from the STM)."""

from __future__ import annotations

import torch

from sparseforge.methods.sharp.learner import SharpLearner, first_per_class
from sparseforge.models import create_model

LABELS = torch.arange(1000) % 10  # position p has label p mod 10
TASK = torch.nonzero((LABELS == 2) | (LABELS == 3)).flatten()  # the training positions of one episode


def learner(seed: int, **options) -> SharpLearner:
    torch.manual_seed(0)  # the same network for every learner: only the option under test differs
    return SharpLearner(create_model("sharp_mnistlike", 10, 1, 28), seed=seed, **options)


def subsets(seed: int, episode: int = 1, **options) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """(unit-scoring samples, first 5 per class) of the episode, as the method takes them."""
    order = learner(seed, **options).episode_samples(episode, TASK[torch.randperm(len(TASK))])
    return order[:16], first_per_class(LABELS, order, [2, 3], 5)


def same(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and all(torch.equal(a[1][c], b[1][c]) for c in (2, 3))


def test_subsets_are_identical_for_the_same_seed_and_differ_across_seeds():
    first, again, other = subsets(0), subsets(0), subsets(1)
    assert same(first, again)  # also independent of the order the task's positions come in
    assert not torch.equal(first[0], other[0])
    assert all(not torch.equal(first[1][c], other[1][c]) for c in (2, 3))
    assert not same(first, subsets(0, episode=2))  # each episode its own order
    for scoring, per_class in (first, other):
        assert set(scoring.tolist()) <= set(TASK.tolist())
        for c in (2, 3):
            assert len(per_class[c]) == 5 and bool((LABELS[per_class[c]] == c).all())


def test_file_order_takes_the_first_samples_in_dataset_order_for_every_seed():
    scoring, per_class = subsets(0, sample_order="file")
    assert same((scoring, per_class), subsets(7, sample_order="file"))
    assert torch.equal(scoring, TASK[:16])
    assert torch.equal(per_class[2], TASK[LABELS[TASK] == 2][:5])


def ltm_rows_from_stm(seed: int, stored: int, ltm_per_class: int) -> list[int]:
    """Which STM entries of a replayed class the LTM was built from, by matching representations."""
    sharp = learner(seed, stm_per_class=stored, ltm_per_class=ltm_per_class)
    sharp.ranks = {name: torch.ones_like(r) for name, r in sharp.ranks.items()}  # no idle unit masked out
    sharp._sync_unit_mask()
    sharp.model.eval()
    with torch.no_grad():
        images = torch.randn(stored, 1, 28, 28, generator=torch.Generator().manual_seed(5))
        sharp.stm.insert(0, 4, sharp.model.cutoff(images))  # class 4, replayed in episode 1
        candidates = sharp.replay_representation(sharp.to_replay_input(4, "cpu"))
        sharp._update_ltm(1, {})
    entry = sharp.ltm.representations[4]
    rows = [int(torch.cdist(z[None], candidates).argmin()) for z in entry]
    assert torch.allclose(entry, candidates[rows], atol=1e-5)
    return rows


def test_ltm_of_replayed_classes_is_a_seeded_random_draw_from_the_stm():
    rows = ltm_rows_from_stm(seed=0, stored=40, ltm_per_class=10)
    assert rows == ltm_rows_from_stm(seed=0, stored=40, ltm_per_class=10)
    assert rows != ltm_rows_from_stm(seed=1, stored=40, ltm_per_class=10)
    assert len(set(rows)) == 10 and rows != list(range(10))  # without replacement, not the first ten
    short = ltm_rows_from_stm(seed=0, stored=4, ltm_per_class=10)  # fewer stored: with replacement
    assert len(short) == 10 and set(short) <= set(range(4))
