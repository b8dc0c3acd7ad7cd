"""Continual-learning scenarios: how a dataset is cut into a sequence of tasks.

A scenario is plain Python over label tensors. ``build`` returns one :class:`Task` per task with
the ids of its training examples and the indices of its test examples; the datamodule and the
task loop only ever see that list. ``IID`` is the one-task scenario, so ordinary training and
continual training share one code path.

A training id is the index of an image in the training split, except in a scenario with
``views_per_task`` (domain-IL), where every task sees the whole split through a transform of its
own: there id ``t * N + i`` is image ``i`` of the ``N`` seen through task ``t``'s transform, so the
same image in two tasks is two examples of the stream (``split_training_ids``).

``online=True`` (any scenario) makes the stream task-free: one pass over every task's data in
order, and the task loop hides the boundaries from the method (no ``begin_task``/``end_task``, no
fresh optimizer); the tasks still say where to evaluate, so the accuracy matrix exists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from sparseforge.errors import ConfigError


@dataclass(frozen=True)
class Task:
    id: int
    classes: tuple[int, ...]  # classes whose examples this task trains on
    train_index: torch.Tensor  # ids of its training examples (indices into the training split, see above)
    test_index: torch.Tensor  # indices into the test split, used to evaluate this task
    # indices into the training split held out for validation (data.val_fraction; continual/validation.py)
    val_index: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))


class Scenario:
    name = "base"
    #: Whether evaluation is given the task id (logits masked to the task's classes).
    task_incremental = False
    #: Whether task-IL accuracy means anything: tasks own disjoint classes and a task's test set
    #: holds only its own classes. False for overlapping tasks (blurry) and shared classes (domain-IL).
    has_task_il = True
    #: Whether every task sees the whole training split through its own transform (domain-IL):
    #: training ids are then ``task * N + image index`` (see the module docstring).
    views_per_task = False
    #: Whether each task's test set contains the earlier tasks' (blurry): the examples evaluated
    #: after task t are then task t's test set, not the union of the tasks' sets.
    nested_test_sets = False

    def __init__(self, epochs_per_task: int = 1, online: bool = False):
        if int(epochs_per_task) < 1:
            raise ConfigError("scenario.epochs_per_task", f"must be >= 1, got {epochs_per_task}")
        if online and int(epochs_per_task) != 1:
            raise ConfigError(
                "scenario.epochs_per_task", f"an online stream is one pass over the data, got {epochs_per_task}", "1"
            )
        self.epochs_per_task = int(epochs_per_task)
        self.online = bool(online)

    def build(self, train_y: torch.Tensor, test_y: torch.Tensor, num_classes: int, seed: int) -> list[Task]:
        raise NotImplementedError

    def task_transform(self, image_shape: Sequence[int], seed: int):
        """The per-task input transform (a module ``(x, task) -> x``, see
        ``sparseforge.data.task_transforms``), or None when every task sees the images as they are."""
        return None

    def describe(self, tasks: Sequence[Task]) -> str:
        online = ", online" if self.online else ""
        return f"{self.name}: {len(tasks)} task(s) x {self.epochs_per_task} epoch(s){online}"


def split_training_ids(
    ids: torch.Tensor, n_images: int, views_per_task: bool, task_of_image: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image index, task id) of training ids: ``(ids % N, ids // N)`` for a scenario with
    ``views_per_task``, else ``(ids, task_of_image[ids])`` (the first task that trains on the image)."""
    if views_per_task:
        return ids % n_images, ids // n_images
    return ids, task_of_image.index_select(0, ids)  # index_select: cheaper than [] on small batches


def _index_of_classes(labels: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    return torch.nonzero(torch.isin(labels, torch.tensor(list(classes), dtype=labels.dtype))).flatten()


class IID(Scenario):
    """No tasks: one task with every class. Plain supervised training."""

    name = "iid"

    def build(self, train_y, test_y, num_classes, seed):
        classes = tuple(range(num_classes))
        return [Task(0, classes, torch.arange(len(train_y)), torch.arange(len(test_y)))]


class ClassIncremental(Scenario):
    """Classes split into ``n_tasks`` disjoint groups in a fixed order; one head over all classes.

    ``class_order``: ``null`` (natural order 0..C-1), ``"random"`` (a permutation seeded by
    ``order_seed``, or the run seed when that is null) or an explicit list that must be a
    permutation of the dataset's classes. ``task_sizes`` gives an explicit uneven split.

    ``train_per_task`` trains each task on a class-balanced subset of its training examples
    (``train_per_task // classes of the task`` per class; the test split stays whole), for
    reduced-scale studies. The subset is drawn by one generator seeded with ``subset_seed``,
    not the run seed, so every run (arm, seed) of a study trains on the same examples.
    """

    name = "class_il"

    def __init__(
        self,
        n_tasks: int = 5,
        epochs_per_task: int = 1,
        class_order: str | Sequence[int] | None = None,
        order_seed: int | None = None,
        task_sizes: Sequence[int] | None = None,
        train_per_task: int | None = None,
        subset_seed: int = 0,
        online: bool = False,
    ):
        super().__init__(epochs_per_task, online)
        if int(n_tasks) < 1:
            raise ConfigError("scenario.n_tasks", f"must be >= 1, got {n_tasks}")
        if train_per_task is not None and int(train_per_task) < 1:
            raise ConfigError("scenario.train_per_task", f"must be null or >= 1, got {train_per_task}")
        self.n_tasks = int(n_tasks)
        self.class_order = class_order
        self.order_seed = order_seed
        self.task_sizes = list(task_sizes) if task_sizes is not None else None
        self.train_per_task = int(train_per_task) if train_per_task is not None else None
        self.subset_seed = int(subset_seed)

    def resolve_class_order(self, num_classes: int, seed: int) -> list[int]:
        order = self.class_order
        if order is None or order == "natural":
            return list(range(num_classes))
        if order == "random":
            g = torch.Generator().manual_seed(self.order_seed if self.order_seed is not None else seed)
            return torch.randperm(num_classes, generator=g).tolist()
        if isinstance(order, str):
            raise ConfigError("scenario.class_order", f"unknown value {order!r}", "null, natural, random, or a list")
        order = [int(c) for c in order]
        if sorted(order) != list(range(num_classes)):
            raise ConfigError(
                "scenario.class_order",
                f"must be a permutation of the dataset's {num_classes} classes 0..{num_classes - 1}, got {order}",
            )
        return order

    def resolve_task_sizes(self, num_classes: int) -> list[int]:
        if self.task_sizes is not None:
            sizes = self.task_sizes
            if len(sizes) != self.n_tasks or sum(sizes) != num_classes or min(sizes) < 1:
                raise ConfigError(
                    "scenario.task_sizes",
                    f"{sizes} must be {self.n_tasks} positive sizes summing to {num_classes} classes",
                )
            return sizes
        if num_classes % self.n_tasks:
            raise ConfigError(
                "scenario.n_tasks",
                f"{self.n_tasks} tasks do not divide the dataset's {num_classes} classes; "
                "pick a divisor or give an explicit uneven split in scenario.task_sizes",
            )
        return [num_classes // self.n_tasks] * self.n_tasks

    def build(self, train_y, test_y, num_classes, seed):
        order = self.resolve_class_order(num_classes, seed)
        sizes = self.resolve_task_sizes(num_classes)
        tasks, start = [], 0
        for t, size in enumerate(sizes):
            classes = tuple(order[start : start + size])
            start += size
            tasks.append(Task(t, classes, _index_of_classes(train_y, classes), _index_of_classes(test_y, classes)))
        if self.train_per_task is not None:
            tasks = self.subsample(tasks, train_y)
        return tasks

    def subsample(self, tasks: list[Task], train_y: torch.Tensor) -> list[Task]:
        """Each task's training examples cut to ``train_per_task``, the same number per class."""
        g = torch.Generator().manual_seed(self.subset_seed)
        out = []
        for task in tasks:
            per_class = self.train_per_task // len(task.classes)
            if per_class < 1:
                raise ConfigError(
                    "scenario.train_per_task",
                    f"{self.train_per_task} is fewer than task {task.id}'s {len(task.classes)} classes",
                )
            keep = []
            for c in task.classes:
                members = task.train_index[train_y[task.train_index] == c]
                if len(members) < per_class:
                    raise ConfigError(
                        "scenario.train_per_task",
                        f"asks for {per_class} examples of class {c}, the training split has {len(members)}",
                    )
                keep.append(members[torch.randperm(len(members), generator=g)[:per_class]])
            out.append(Task(task.id, task.classes, torch.cat(keep).sort().values, task.test_index))
        return out


class TaskIncremental(ClassIncremental):
    """The class-IL split, evaluated with the task id given (logits masked to the task's classes)."""

    name = "task_il"
    task_incremental = True


class Blurry(Scenario):
    """Blurry task boundaries, exactly as SHARP's noisy launcher builds them (Gurbuz et al. 2023).

    With ``k = class_per_episode``:

    1. Episode 0 takes ``k`` distinct classes drawn uniformly from all classes.
    2. Every later episode has ``k`` slots, filled one after another. A slot takes an unseen class
       (drawn uniformly from the unseen ones) with probability ``p_novelty`` while unseen classes
       remain; otherwise it takes a class drawn uniformly from the already-seen classes that are
       not yet in this episode. A class drawn as new counts as seen from then on.
    3. Episodes continue until every class has been seen, so the number of tasks is random (fixed
       by the seed) and the last episode is the one that introduces the last unseen class.
    4. For every class of an episode, a fresh uniform random subset of ``floor(p_sample * n_c)``
       of its ``n_c`` training images is used (``p_sample = 1``: all of them, so a class that
       recurs brings back the same images).
    5. The test set of episode ``e`` is the whole test split of every class seen up to and
       including episode ``e``. Hence ``R[t][j]`` is the accuracy on all classes seen by episode
       ``j``, after training episode ``t``, and ``R[t][t]`` on all classes seen so far.

    Classes recur across episodes, so there is no task-IL evaluation (``has_task_il = False``).
    Draws come from one torch generator seeded by ``order_seed`` (or the run seed), and labels are
    tensors for every dataset, so unlike the reference code it works on CIFAR (whose torchvision
    targets are a Python list) as well as on the MNIST-likes.
    """

    name = "blurry"
    has_task_il = False
    nested_test_sets = True

    def __init__(
        self,
        class_per_episode: int = 3,
        p_novelty: float = 0.3,
        p_sample: float = 1.0,
        epochs_per_task: int = 1,
        order_seed: int | None = None,
        online: bool = False,
    ):
        super().__init__(epochs_per_task, online)
        if int(class_per_episode) < 1:
            raise ConfigError("scenario.class_per_episode", f"must be >= 1, got {class_per_episode}")
        # p_novelty = 0 would never introduce the remaining classes: the stream would not end.
        if not 0.0 < float(p_novelty) <= 1.0:
            raise ConfigError("scenario.p_novelty", f"must be in (0, 1], got {p_novelty}")
        if not 0.0 < float(p_sample) <= 1.0:
            raise ConfigError("scenario.p_sample", f"must be in (0, 1], got {p_sample}")
        self.class_per_episode = int(class_per_episode)
        self.p_novelty = float(p_novelty)
        self.p_sample = float(p_sample)
        self.order_seed = order_seed

    def episode_classes(self, num_classes: int, g: torch.Generator) -> list[list[int]]:
        """The class list of every episode (steps 1-3 of the definition)."""
        k = self.class_per_episode
        if k > num_classes:
            raise ConfigError(
                "scenario.class_per_episode",
                f"{k} is more than the dataset's {num_classes} classes",
                f"1..{num_classes}",
            )

        def pick(pool: list[int]) -> int:
            return pool[int(torch.randint(len(pool), (1,), generator=g))]

        unseen = list(range(num_classes))
        first = [unseen[i] for i in torch.randperm(num_classes, generator=g)[:k].tolist()]
        seen = list(first)
        unseen = [c for c in unseen if c not in first]
        episodes = [first]
        while unseen:
            episode: list[int] = []
            for _ in range(k):
                # One uniform draw per slot, as in the reference: novelty when u <= p_novelty.
                novel = float(torch.rand((), generator=g)) <= self.p_novelty
                if unseen and novel:
                    c = pick(unseen)
                    unseen.remove(c)
                    seen.append(c)
                else:
                    c = pick([s for s in seen if s not in episode])
                episode.append(c)
            episodes.append(episode)
        return episodes

    def build(self, train_y, test_y, num_classes, seed):
        g = torch.Generator().manual_seed(self.order_seed if self.order_seed is not None else seed)
        tasks, seen = [], []
        for t, classes in enumerate(self.episode_classes(num_classes, g)):
            parts = []
            for c in classes:
                members = _index_of_classes(train_y, [c])
                n = int(len(members) * self.p_sample)
                if n < 1:
                    raise ConfigError(
                        "scenario.p_sample", f"{self.p_sample} leaves class {c} ({len(members)} images) with no image"
                    )
                parts.append(members[torch.randperm(len(members), generator=g)[:n]])
            seen += [c for c in classes if c not in seen]
            train_index = torch.cat(parts).sort().values
            tasks.append(Task(t, tuple(classes), train_index, _index_of_classes(test_y, seen)))
        return tasks

    def describe(self, tasks: Sequence[Task]) -> str:
        return (
            f"blurry: {len(tasks)} episodes of {self.class_per_episode} classes "
            f"(p_novelty {self.p_novelty}, p_sample {self.p_sample}) x {self.epochs_per_task} epoch(s)"
            + (", online" if self.online else "")
        )


class DomainIncremental(Scenario):
    """Domain-incremental: every task has every class and the whole split, seen through a fixed
    transform of its own (Permuted MNIST, Rotated MNIST; Mammoth's ``domain-il`` setting). One head
    over the classes, no task id at test time; task ``j`` is evaluated on the whole test split
    through task ``j``'s transform.

    ``task_transform`` is a partial of a ``sparseforge.data.task_transforms.TaskTransform``
    completed with ``n_tasks``, ``image_shape`` and ``seed`` (``transform_seed``, or the run seed
    when that is null), so the transform of every task is fixed by the seed.
    """

    name = "domain_il"
    has_task_il = False  # every task has the same classes: task-IL accuracy is class-IL accuracy
    views_per_task = True

    def __init__(
        self,
        n_tasks: int = 20,
        epochs_per_task: int = 1,
        task_transform: Callable[..., object] | None = None,
        transform_seed: int | None = None,
        online: bool = False,
    ):
        super().__init__(epochs_per_task, online)
        if int(n_tasks) < 1:
            raise ConfigError("scenario.n_tasks", f"must be >= 1, got {n_tasks}")
        if task_transform is None:
            raise ConfigError(
                "scenario.task_transform",
                "a domain-incremental stream needs a transform per task",
                "a partial of sparseforge.data.task_transforms.PixelPermutation or Rotation (+experiment=perm_mnist, rot_mnist)",
            )
        self.n_tasks = int(n_tasks)
        self._task_transform = task_transform
        self.transform_seed = transform_seed

    def build(self, train_y, test_y, num_classes, seed):
        n, classes, test = len(train_y), tuple(range(num_classes)), torch.arange(len(test_y))
        return [Task(t, classes, t * n + torch.arange(n), test) for t in range(self.n_tasks)]

    def task_transform(self, image_shape, seed):
        seed = self.transform_seed if self.transform_seed is not None else seed
        try:
            return self._task_transform(n_tasks=self.n_tasks, image_shape=tuple(image_shape), seed=int(seed))
        except TypeError as exc:
            raise ConfigError("scenario.task_transform", str(exc).splitlines()[0]) from None

    def describe(self, tasks: Sequence[Task]) -> str:
        return f"domain_il: {len(tasks)} tasks x {self.epochs_per_task} epoch(s)" + (", online" if self.online else "")
