"""The continual datamodule: one dataset, one scenario, a loader for the current task.

It serves the task that ``trainer.current_epoch`` falls in (the trainer reloads loaders every
epoch), asks the method which examples to train on (``training_indices``: joint training adds
past tasks, SparCL's data removal drops some), and turns uint8 batches into
:class:`Batch` on the device (augmentation + normalisation, see ``transforms.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from sparseforge.continual.scenarios import Scenario, Task
from sparseforge.data.base import ImageDataset, ImageTensors
from sparseforge.data.transforms import BatchTransform


class Batch(NamedTuple):
    x: torch.Tensor  # augmented (when training) and normalised float input
    y: torch.Tensor  # labels
    task: torch.Tensor  # task id of each example
    index: torch.Tensor  # position in the training split (stable id, e.g. for forgetting statistics)
    raw: torch.Tensor  # the non-augmented uint8 input, for replay buffers


class _IndexedImages(torch.utils.data.Dataset):
    """Examples ``index`` of an in-memory split, fetched a whole batch at a time."""

    def __init__(self, data: ImageTensors, index: torch.Tensor, task_of_example: torch.Tensor):
        self.data, self.index, self.task_of_example = data, index, task_of_example

    def __len__(self) -> int:
        return len(self.index)

    def __getitems__(self, positions):
        idx = self.index[torch.as_tensor(positions, dtype=torch.long)]
        return self.data.x[idx], self.data.y[idx], self.task_of_example[idx], idx

    def __getitem__(self, position):  # single-item access, for completeness
        return tuple(t[0] for t in self.__getitems__([position]))


def _keep_batch(batch):
    return batch


class EpochPermutation(torch.utils.data.Sampler[int]):
    """A random order fixed by ``seed``: every ``iter()`` yields the same permutation.

    A DataLoader's ``shuffle=True`` draws from a generator that every ``iter()`` advances, and
    Lightning iterates a loader once more when it resumes, so the resumed epoch would see a
    different order than the uninterrupted run. This sampler has no such state. Under DDP,
    Lightning wraps every training sampler in a shuffling ``DistributedSamplerWrapper`` (seeded by
    ``seed_everything``'s seed and ``set_epoch``), so each rank takes a strided share of a second
    permutation of this order: still a function of (seed, epoch) only.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed)).tolist())


class ResumableLoader(DataLoader):
    """A DataLoader that can resume a pass where a checkpoint left it.

    Lightning saves ``state_dict()`` of a stateful training loader into every checkpoint and
    hands it back to ``load_state_dict()`` on resume. The state is the number of batches this pass
    has served; a resumed pass reads past that many batches without returning them. The order is
    a function of (seed, epoch), so the batches after the skip are exactly those the interrupted
    pass would have served next. Skipped batches are only indexed, never transferred or augmented,
    so they draw nothing from the RNGs.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._served = 0
        self._skip = 0

    def __iter__(self):
        skip, self._skip = self._skip, 0
        self._served = 0
        return _Counting(super().__iter__(), self, skip)

    def state_dict(self) -> dict[str, int]:
        return {"batches_served": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._skip = int(state["batches_served"])


class _Counting:
    """The loader's iterator, counting the batches it hands out (the resume point).

    The skip happens at the first ``next()``, not at ``iter()``: under DDP Lightning calls
    ``set_epoch`` on the distributed sampler between the two, and the sampler's order for the
    epoch is only fixed when the first index is drawn.
    """

    def __init__(self, iterator, loader: ResumableLoader, skip: int):
        self.iterator, self.loader, self.skip = iterator, loader, skip

    def __iter__(self):
        return self

    def __next__(self):
        while self.skip:
            self.skip -= 1
            next(self.iterator)
            self.loader._served += 1
        batch = next(self.iterator)
        self.loader._served += 1
        return batch

    def __len__(self) -> int:
        return len(self.iterator)


class ContinualDataModule(pl.LightningDataModule):
    def __init__(
        self,
        dataset: ImageDataset,
        scenario: Scenario,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        pin_memory: bool = False,
        drop_last: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        self.dataset, self.scenario = dataset, scenario
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.num_workers, self.pin_memory, self.drop_last = num_workers, pin_memory, drop_last
        self.seed = seed
        self.transform = BatchTransform(dataset.mean, dataset.std, dataset.crop_padding, dataset.hflip)
        self.train_data: ImageTensors | None = None
        self.test_data: ImageTensors | None = None
        self.tasks: list[Task] = []

    # -- data --------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.tasks:
            return
        self.train_data = self.dataset.load(train=True)
        self.test_data = self.dataset.load(train=False)
        self.tasks = self.scenario.build(self.train_data.y, self.test_data.y, self.dataset.num_classes, self.seed)
        # The task of a training example is the first task that trains on it.
        self._task_of_example = torch.full((len(self.train_data),), -1, dtype=torch.long)
        for task in reversed(self.tasks):
            self._task_of_example[task.train_index] = task.id

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def total_epochs(self) -> int:
        return self.n_tasks * self.scenario.epochs_per_task

    def task_of_epoch(self, epoch: int) -> int:
        return min(epoch // self.scenario.epochs_per_task, self.n_tasks - 1)

    def epoch_in_task(self, epoch: int) -> int:
        return epoch - self.task_of_epoch(epoch) * self.scenario.epochs_per_task

    def train_loader_for(self, index: torch.Tensor, epoch: int) -> ResumableLoader:
        # The order is a function of (seed, epoch) only, so a resumed run replays the same order.
        # The loader's own generator only seeds workers; giving it one keeps iter() from drawing
        # on the global torch RNG, which the augmentations use.
        order_seed = self.seed * 1_000_003 + epoch
        return ResumableLoader(
            _IndexedImages(self.train_data, index, self._task_of_example),
            batch_size=self.batch_size,
            sampler=EpochPermutation(len(index), order_seed),
            generator=torch.Generator().manual_seed(order_seed),
            drop_last=self.drop_last and len(index) > self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=_keep_batch,
            persistent_workers=False,
        )

    def train_dataloader(self) -> ResumableLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        task = self.tasks[self.task_of_epoch(epoch)]
        method = self.trainer.lightning_module if self.trainer is not None else None
        index = method.training_indices(task, self.tasks) if method is not None else task.train_index
        return self.train_loader_for(index, epoch)

    # -- device-side transforms ------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        raw, y, task, index = batch
        training = self.trainer is not None and self.trainer.training
        return Batch(self.transform(raw, train=training), y, task, index, raw)

    def preprocess_eval(self, raw: torch.Tensor) -> torch.Tensor:
        return self.transform(raw, train=False)

    def augment(self, raw: torch.Tensor) -> torch.Tensor:
        """Training-time view of raw uint8 inputs (used to re-augment replayed examples)."""
        return self.transform(raw, train=True)
