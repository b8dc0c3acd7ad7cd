"""The continual datamodule: one dataset, one scenario, a loader for the current task.

It serves the task that ``trainer.current_epoch`` falls in (the trainer reloads loaders every
epoch), asks the method which examples to train on (``training_indices``: joint training adds
past tasks, SparCL's data removal drops some), and turns loader batches into :class:`Batch` on
the device.

Where each transform runs (``data/transforms.py``): an in-memory split with a batched training
augmentation (or none) is the fast path: batches are slices of uint8 tensors, augmented and
normalised on the device. A per-image training transform, or a disk-backed split, runs in the
loader (its workers), image by image, and the device only normalises. ``batch_transform``
(``data.batch_transform``, e.g. timm's Mixup) then mixes the current batch into soft targets.
Replayed examples are re-augmented from their raw views by the same training transform.

Training examples are addressed by their ids in the stream (``continual/scenarios.py``): the index
of an image in the training split, or, in a domain-incremental stream, ``task * N + image``. The
loader turns ids into images and task ids (``locate``); the task ids reach the device transform,
which gives every example its own task's view (a per-task permutation or rotation) in training,
in replay (the buffer stores each example's task id) and in evaluation (``eval_batches(task=j)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from sparseforge.continual.scenarios import Scenario, Task, split_training_ids
from sparseforge.continual.validation import hold_out_validation
from sparseforge.data.base import ImageDataset, ImageSplit, ImageTensors
from sparseforge.data.transforms import DeviceTransform, mix_batch, per_image_on_tensors, split_transforms
from sparseforge.errors import ConfigError
from sparseforge.utils.seeding import isolated_rng


class Batch(NamedTuple):
    x: torch.Tensor  # augmented (when training) and normalised float input
    y: torch.Tensor  # labels
    task: torch.Tensor  # task id of each example
    index: torch.Tensor  # the example's id in the stream (stable, e.g. for forgetting statistics; see above)
    raw: torch.Tensor  # the non-augmented uint8 input, for replay buffers
    target: torch.Tensor | None = None  # soft targets (N x C) when data.batch_transform mixed the batch


class _TrainingIds:
    """Training ids -> (image index, task id): picklable, for the loader's workers."""

    def __init__(self, n_images: int, views_per_task: bool, task_of_image: torch.Tensor):
        self.n_images, self.views_per_task, self.task_of_image = n_images, views_per_task, task_of_image

    def __call__(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return split_training_ids(ids, self.n_images, self.views_per_task, self.task_of_image)


class _IndexedImages(torch.utils.data.Dataset):
    """Training examples ``index`` (ids) of an in-memory split, fetched a whole batch at a time."""

    def __init__(self, data: ImageTensors, index: torch.Tensor, locate: _TrainingIds):
        self.data, self.index, self.locate = data, index, locate

    def __len__(self) -> int:
        return len(self.index)

    def __getitems__(self, positions):
        # index_select, not advanced indexing: a third of the cost for a small batch on a CPU
        ids = self.index.index_select(0, torch.as_tensor(positions, dtype=torch.long))
        images, task = self.locate(ids)
        return self.data.x.index_select(0, images), self.data.y.index_select(0, images), task, ids

    def __getitem__(self, position):  # single-item access, for completeness
        return tuple(t[0] for t in self.__getitems__([position]))


class _TransformedImages(_IndexedImages):
    """Examples ``index`` of any split, a batch at a time, each image through the per-image
    training transform (in the loader's workers). The batch is ``(raw, y, task, index, x)``.

    A batch draws its augmentation from RNG streams seeded by (``seed``, its first position), so
    it depends neither on ``num_workers`` nor on a resume that skips batches before it.
    """

    def __init__(self, data: ImageSplit, index, locate: _TrainingIds, transform: Callable | None, seed: int):
        super().__init__(data, index, locate)
        self.transform, self.seed = transform, seed

    def __getitems__(self, positions):
        ids = self.index[torch.as_tensor(positions, dtype=torch.long)]
        images, task = self.locate(ids)
        with isolated_rng(self.seed, positions[0]):
            raw, x = self.data.fetch(images, self.transform)
        batch = (raw, self.data.y[images], task, ids)
        return batch if x is None else (*batch, x)


class _EvalChunks(torch.utils.data.Dataset):
    """Evaluation inputs of a split, one chunk of examples per item (one loader batch)."""

    def __init__(self, data: ImageSplit, chunks, transform: Callable | None):
        self.data, self.chunks, self.transform = data, chunks, transform

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> torch.Tensor:
        raw, x = self.data.fetch(self.chunks[k], self.transform)
        return raw if x is None else x


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

    def order(self) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed))

    def __iter__(self):
        return iter(self.order().tolist())


class SlicedLoader:
    """The fast path's training loader: the batches of an in-memory split, in the order of the
    epoch's :class:`EpochPermutation`.

    The same batches, in the same order, as a DataLoader with a ``BatchSampler`` over the
    permutation gives, without its per-batch machinery (sampler iterator, fetcher, collate,
    profiler record): at batch 10 on a CPU that machinery cost as much as indexing the images.
    The pass's training ids and their task ids are gathered once, at its start; a batch is then
    two slices of those and one gather of its images and labels. Resumable as
    :class:`ResumableLoader` is (the same ``state_dict``); a skipped batch is not even gathered.
    Used without worker processes, per-image transforms or a distributed strategy (see
    ``ContinualDataModule._serves_slices``); everything else goes through a DataLoader.
    """

    def __init__(
        self,
        examples: _IndexedImages,
        order: EpochPermutation,
        batch_size: int,
        drop_last: bool,
        pin_memory: bool = False,
    ):
        self.examples, self.order, self.batch_size = examples, order, batch_size
        self.drop_last, self.pin_memory = drop_last, pin_memory
        self._served = 0
        self._skip = 0

    def __len__(self) -> int:
        n = len(self.order)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        skip, self._skip = self._skip, 0
        self._served = 0
        return self._batches(skip)

    def _batches(self, skip: int) -> Iterator[tuple[torch.Tensor, ...]]:
        examples, size = self.examples, self.batch_size
        ids = examples.index.index_select(0, self.order.order())  # the pass's ids, in order
        images, task = examples.locate(ids)
        x, y = examples.data.x, examples.data.y
        self._served = skip
        for start in range(skip * size, len(self) * size, size):
            stop = start + size
            batch_images = images[start:stop]
            batch = (
                x.index_select(0, batch_images),
                y.index_select(0, batch_images),
                task[start:stop],
                ids[start:stop],
            )
            self._served += 1
            yield tuple(t.pin_memory() for t in batch) if self.pin_memory else batch

    def state_dict(self) -> dict[str, int]:
        return {"batches_served": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._skip = int(state["batches_served"])


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
        batch_transform: Callable | None = None,
        val_fraction: float = 0.0,
    ):
        super().__init__()
        self.dataset, self.scenario = dataset, scenario
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.num_workers, self.pin_memory, self.drop_last = num_workers, pin_memory, drop_last
        self.seed = seed
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ConfigError("data.val_fraction", f"must be in [0, 1), got {val_fraction}", "0 (off) to < 1")
        # Held out of every task's training examples, per class, seeded by ``seed``.
        self.val_fraction = float(val_fraction)
        self.train_per_image, train_batched = split_transforms(dataset.train_transform, "dataset.train_transform")
        self.eval_per_image, eval_batched = split_transforms(dataset.eval_transform, "dataset.eval_transform")
        normalize = getattr(dataset, "normalize", True)
        self.transform = DeviceTransform(dataset.mean, dataset.std, train_batched, eval_batched, normalize)
        # A partial completed with the number of classes in setup() (timm's Mixup needs it).
        self._batch_transform_factory = batch_transform
        self.batch_transform: Callable | None = None
        self.train_data: ImageSplit | None = None
        self.test_data: ImageSplit | None = None
        self.tasks: list[Task] = []
        self._locate: _TrainingIds | None = None

    # -- data --------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.tasks:
            return
        self.train_data = self.dataset.load(train=True)
        self.test_data = self.dataset.load(train=False)
        tasks = self.scenario.build(self.train_data.y, self.test_data.y, self.dataset.num_classes, self.seed)
        n_images, views = len(self.train_data), self.scenario.views_per_task
        if views and self.val_fraction > 0:
            raise ConfigError(
                "data.val_fraction", "a stream with per-task views (domain-IL) has no validation split yet", "0.0"
            )
        self.tasks = hold_out_validation(tasks, self.train_data.y, self.val_fraction, self.seed)
        # Without per-task views, an image's task is the first task that trains on it.
        task_of_image = torch.full((n_images,), -1, dtype=torch.long)
        if not views:
            for task in reversed(self.tasks):
                task_of_image[task.train_index] = task.id
        self._locate = _TrainingIds(n_images, views, task_of_image)
        self.transform.task_transform = self.scenario.task_transform(self.train_data.raw_shape, self.seed)
        if self._batch_transform_factory is not None:
            try:
                self.batch_transform = self._batch_transform_factory(num_classes=self.dataset.num_classes)
            except (TypeError, ValueError) as exc:
                raise ConfigError("data.batch_transform", str(exc).splitlines()[0]) from None
        self._check_per_image_transforms()

    def _check_per_image_transforms(self) -> None:
        """Pre-flight: run the per-image transforms on two images of each split (on RNG streams of
        their own, so the run's RNGs stay untouched)."""
        for key, split, transform in (
            ("dataset.train_transform", self.train_data, self.train_per_image),
            ("dataset.eval_transform", self.test_data, self.eval_per_image),
        ):
            if transform is None:
                continue
            try:
                with isolated_rng(self.seed):
                    _, x = split.fetch(torch.tensor([0, len(split) - 1]), transform)
            except (TypeError, ValueError, AttributeError, RuntimeError) as exc:
                raise ConfigError(key, f"fails on the dataset's images: {str(exc).splitlines()[0]}") from None
            if x.dtype != torch.uint8 and not (
                x.is_floating_point() and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
            ):
                raise ConfigError(
                    key,
                    f"must give uint8 or [0, 1] float tensors (the datamodule normalises), got {x.dtype} "
                    f"in [{float(x.min()):.3g}, {float(x.max()):.3g}]",
                    "PILToTensor or ToTensor last; timm's create_transform with normalize: false",
                )

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def n_training_ids(self) -> int:
        """How many distinct training ids the stream can have (ids are below this)."""
        return len(self.train_data) * (self.n_tasks if self.scenario.views_per_task else 1)

    def locate(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(index in the training split, task id) of training ids."""
        return self._locate(ids.cpu())

    @property
    def total_epochs(self) -> int:
        return self.n_tasks * self.scenario.epochs_per_task

    def task_of_epoch(self, epoch: int) -> int:
        return min(epoch // self.scenario.epochs_per_task, self.n_tasks - 1)

    def epoch_in_task(self, epoch: int) -> int:
        return epoch - self.task_of_epoch(epoch) * self.scenario.epochs_per_task

    def train_loader_for(self, index: torch.Tensor, epoch: int) -> SlicedLoader | ResumableLoader:
        # The order is a function of (seed, epoch) only, so a resumed run replays the same order.
        # The loader's own generator only seeds workers; giving it one keeps iter() from drawing
        # on the global torch RNG, which the augmentations use.
        order_seed = self.seed * 1_000_003 + epoch
        order = EpochPermutation(len(index), order_seed)
        drop_last = self.drop_last and len(index) > self.batch_size
        if isinstance(self.train_data, ImageTensors) and self.train_per_image is None:  # the fast path
            examples = _IndexedImages(self.train_data, index, self._locate)
        else:
            examples = _TransformedImages(self.train_data, index, self._locate, self.train_per_image, order_seed)
        if self._serves_slices(examples):
            return SlicedLoader(examples, order, self.batch_size, drop_last, self.pin_memory)
        return ResumableLoader(
            examples,
            sampler=order,
            batch_size=self.batch_size,
            drop_last=drop_last,
            generator=torch.Generator().manual_seed(order_seed),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=_keep_batch,
            persistent_workers=False,
        )

    def _serves_slices(self, examples) -> bool:
        """Whether a :class:`SlicedLoader` can serve the batches: not with worker processes, not
        with per-image transforms (they run in the loader, seeded by the batch's first position),
        and not under a distributed strategy (Lightning gives a DataLoader's ``sampler`` its
        distributed sampler, which hands each rank its share of the permutation)."""
        from lightning.pytorch.strategies import ParallelStrategy

        distributed = self.trainer is not None and isinstance(self.trainer.strategy, ParallelStrategy)
        return self.num_workers == 0 and type(examples) is _IndexedImages and not distributed

    def train_dataloader(self) -> SlicedLoader | ResumableLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        task = self.tasks[self.task_of_epoch(epoch)]
        method = self.trainer.lightning_module if self.trainer is not None else None
        index = method.training_indices(task, self.tasks) if method is not None else task.train_index
        return self.train_loader_for(index, epoch)

    @property
    def mixes_batches(self) -> bool:
        """Whether ``data.batch_transform`` turns the training labels into soft targets (known from
        the config, before any data is read)."""
        return self._batch_transform_factory is not None

    @property
    def has_validation(self) -> bool:
        return self.val_fraction > 0.0

    def eval_batches(
        self, index: torch.Tensor, batch_size: int, device, task: int | None = None, split: str = "test"
    ) -> Iterator[torch.Tensor]:
        """The evaluation inputs of examples ``index`` of the test split (or, with
        ``split="train"``, of the training split: the validation examples) seen as task ``task``
        sees them (its per-task transform, if the stream has one), preprocessed on ``device``,
        ``batch_size`` at a time and in order (for ``evaluate_tasks``)."""
        data = self.test_data if split == "test" else self.train_data
        chunks = index.split(batch_size)
        if isinstance(data, ImageTensors) and self.eval_per_image is None:  # the fast path
            for chunk in chunks:
                yield self.preprocess_eval(data.x[chunk].to(device, non_blocking=True), task)
            return
        inputs = DataLoader(
            _EvalChunks(data, chunks, self.eval_per_image),
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )
        for x in inputs:
            yield self.transform(x.to(device, non_blocking=True), train=False, task=task)

    # -- device-side transforms ------------------------------------------------------------------------
    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        # The loader's batches are tuples of CPU tensors. On a CPU run there is nothing to move, and
        # Lightning's generic walk over the batch cost 4% of a batch-10 MLP step.
        if device.type == "cpu":
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        raw, y, task, index, *transformed = batch  # transformed: the per-image training view, if any
        training = self.trainer is not None and self.trainer.training
        x = self.transform(transformed[0] if transformed else raw, train=training, task=task)
        if training and self.batch_transform is not None:
            x, target = mix_batch(self.batch_transform, x, y)
            return Batch(x, y, task, index, raw, target)
        return Batch(x, y, task, index, raw)

    def preprocess_eval(self, raw: torch.Tensor, task: torch.Tensor | int | None = None) -> torch.Tensor:
        """Evaluation view of raw uint8 inputs of task(s) ``task`` (needed by a stream with a
        transform per task: one id for the batch, or one per example)."""
        if self.eval_per_image is not None:
            raw = per_image_on_tensors(self.eval_per_image, raw)
        return self.transform(raw, train=False, task=task)

    def augment(self, raw: torch.Tensor, task: torch.Tensor | int | None = None) -> torch.Tensor:
        """Training-time view of raw uint8 inputs of task(s) ``task`` (used to re-augment replayed
        examples, with the task ids stored beside them)."""
        if self.train_per_image is not None:
            raw = per_image_on_tensors(self.train_per_image, raw)
        return self.transform(raw, train=True, task=task)
