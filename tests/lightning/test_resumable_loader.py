"""The stateful training loader: a pass resumed from its state serves exactly the rest."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import BatchSampler

from sparseforge.continual.scenarios import ClassIncremental
from sparseforge.data import MNIST
from sparseforge.lightning.datamodule import (
    ContinualDataModule,
    EpochPermutation,
    ResumableLoader,
    SlicedLoader,
    _IndexedImages,
    _TrainingIds,
)
from tests.helpers.fake_data import write_mnist_like


def loader(n: int, batch_size: int, seed: int, drop_last: bool) -> ResumableLoader:
    return ResumableLoader(
        torch.arange(n), batch_size=batch_size, sampler=EpochPermutation(n, seed), drop_last=drop_last
    )


# a pass: examples, batch size, the permutation's seed, whether the last short batch is dropped
PASSES = {
    "n": st.integers(1, 200),
    "batch_size": st.integers(1, 64),
    "seed": st.integers(0, 2**31 - 1),
    "drop_last": st.booleans(),
}


@settings(max_examples=80, deadline=None)
@given(**PASSES, data=st.data())
def test_a_resumed_pass_serves_exactly_the_batches_after_the_saved_point(n, batch_size, seed, drop_last, data):
    full = [b.tolist() for b in loader(n, batch_size, seed, drop_last)]
    cut = data.draw(st.integers(0, len(full)), label="batches served before the checkpoint")

    interrupted = loader(n, batch_size, seed, drop_last)
    it = iter(interrupted)
    for _ in range(cut):
        next(it)
    state = interrupted.state_dict()
    assert state == {"batches_served": cut}

    resumed = loader(n, batch_size, seed, drop_last)  # a new process: a new loader object
    resumed.load_state_dict(state)
    assert [b.tolist() for b in resumed] == full[cut:]
    assert resumed.state_dict() == {"batches_served": len(full)}
    # the skip is for one pass only: the next pass (epoch) is whole again
    assert [b.tolist() for b in resumed] == full


def sliced_loader(n: int, batch_size: int, seed: int, drop_last: bool) -> SlicedLoader:
    """A SlicedLoader over n examples whose images are their own ids (batch[0] is the batch's ids)."""
    ids = torch.arange(n)
    images = type("Images", (), {"x": ids, "y": ids})()  # what _IndexedImages reads: .x and .y
    examples = _IndexedImages(images, ids, _TrainingIds(n, False, torch.zeros(n, dtype=torch.long)))
    return SlicedLoader(examples, EpochPermutation(n, seed), batch_size, drop_last)


@settings(max_examples=80, deadline=None)
@given(**PASSES, data=st.data())
def test_the_sliced_loader_serves_a_batch_samplers_batches_and_resumes_as_the_dataloader(
    n, batch_size, seed, drop_last, data
):
    """The fast path's loader gives the batches a BatchSampler over the permutation gives, and its
    state resumes a pass exactly as ResumableLoader's does."""
    expected = list(BatchSampler(EpochPermutation(n, seed), batch_size, drop_last))
    full = [batch[0].tolist() for batch in sliced_loader(n, batch_size, seed, drop_last)]
    assert full == expected and len(sliced_loader(n, batch_size, seed, drop_last)) == len(expected)
    cut = data.draw(st.integers(0, len(full)), label="batches served before the checkpoint")
    interrupted, reference = sliced_loader(n, batch_size, seed, drop_last), loader(n, batch_size, seed, drop_last)
    it, it_reference = iter(interrupted), iter(reference)
    for _ in range(cut):
        next(it), next(it_reference)
    assert interrupted.state_dict() == reference.state_dict() == {"batches_served": cut}
    resumed = sliced_loader(n, batch_size, seed, drop_last)
    resumed.load_state_dict(interrupted.state_dict())
    assert [batch[0].tolist() for batch in resumed] == full[cut:]
    assert resumed.state_dict() == {"batches_served": len(full)}
    assert [batch[0].tolist() for batch in resumed] == full  # the next pass is whole again


def test_the_datamodules_loader_serves_the_same_examples_with_or_without_workers(data_dir):
    """The sliced loader (no workers) or a DataLoader (workers): the same batches, and a resumed
    pass serves the rest."""
    write_mnist_like(data_dir, n_train=95, n_test=10)
    dm = ContinualDataModule(MNIST(data_dir, download=False), ClassIncremental(n_tasks=1), batch_size=10, seed=4)
    dm.setup()
    index = dm.tasks[0].train_index
    assert isinstance(dm.train_loader_for(index, epoch=2), SlicedLoader)
    sliced = [[t.tolist() for t in batch] for batch in dm.train_loader_for(index, epoch=2)]
    dm.num_workers = 1
    assert isinstance(dm.train_loader_for(index, epoch=2), ResumableLoader)
    listed = [[t.tolist() for t in batch] for batch in dm.train_loader_for(index, epoch=2)]
    assert sliced == listed and len(sliced) == 10
    assert sorted(i for batch in sliced for i in batch[3]) == index.tolist()  # every example once
    dm.num_workers = 0
    resumed = dm.train_loader_for(index, epoch=2)
    resumed.load_state_dict({"batches_served": 4})
    assert [[t.tolist() for t in batch] for batch in resumed] == sliced[4:]


def test_under_a_distributed_strategy_the_loader_keeps_the_permutation_as_its_sampler(data_dir):
    """Lightning wraps a training DataLoader's ``sampler`` in its distributed sampler, so under DDP
    the loader is a DataLoader over the permutation, not the sliced loader."""
    import lightning.pytorch as pl

    write_mnist_like(data_dir, n_train=40, n_test=10)
    dm = ContinualDataModule(MNIST(data_dir, download=False), ClassIncremental(n_tasks=1), batch_size=10, seed=4)
    dm.setup()
    dm.trainer = pl.Trainer(accelerator="cpu", strategy="ddp", devices=1, logger=False, enable_progress_bar=False)
    loader = dm.train_loader_for(dm.tasks[0].train_index, epoch=0)
    assert isinstance(loader, ResumableLoader) and isinstance(loader.sampler, EpochPermutation)
    dm.trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    assert isinstance(dm.train_loader_for(dm.tasks[0].train_index, epoch=0), SlicedLoader)
