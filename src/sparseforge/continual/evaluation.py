"""Evaluate a model on the test data of several tasks, class-IL and task-IL at once.

Plain PyTorch. Under ``torch.distributed`` every rank scores a disjoint shard and the counts are
summed, so the result is exact (no padding duplicates as with DistributedSampler).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.distributed as dist

from sparseforge.continual.scenarios import Task


@torch.no_grad()
def evaluate_tasks(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    inputs: Callable[..., Iterable[torch.Tensor]],
    labels: torch.Tensor,
    tasks: Sequence[Task],
    device: torch.device,
    batch_size: int = 512,
    limit_batches: int | None = None,
    task_context: Callable[[Task], AbstractContextManager] | None = None,
    num_classes: int | None = None,
) -> dict[str, list]:
    """Accuracy per task. ``score_fn`` maps a preprocessed batch to class scores (B x C);
    ``inputs(index, batch_size, device, task=j)`` yields the preprocessed inputs of test examples
    ``index`` as task ``j`` sees them (a domain-incremental stream transforms each task's view), on
    ``device``, ``batch_size`` at a time, in order; ``labels`` are the test labels.

    class-IL: argmax over all classes. task-IL: argmax over the task's own classes.
    ``task_context(task)``, if given, is entered around the scoring of each task's examples: a
    method that keeps one subnetwork per task puts that task's weights into the model there.
    With ``num_classes`` C, also ``"confusion"``: per task a C x C list of counts, row = true
    class, column = class-IL prediction.
    """
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    counts = torch.zeros(len(tasks), 3, dtype=torch.float64, device=device)  # correct_cil, correct_til, n
    c = num_classes or 0
    confusion = torch.zeros(len(tasks), c * c, dtype=torch.long, device=device)
    for k, task in enumerate(tasks):
        index = task.test_index
        if limit_batches is not None:
            index = index[: limit_batches * batch_size]
        index = index[rank::world]
        classes = torch.tensor(task.classes, device=device)
        with task_context(task) if task_context is not None else nullcontext():
            batches = inputs(index, batch_size, device, task=task.id)
            for chunk, x in zip(index.split(batch_size), batches, strict=True):
                y = labels[chunk].to(device)
                scores = score_fn(x).float()
                predicted = scores.argmax(1)
                counts[k, 0] += (predicted == y).sum()
                counts[k, 1] += (classes[scores[:, classes].argmax(1)] == y).sum()
                counts[k, 2] += len(chunk)
                if c:
                    confusion[k] += torch.bincount(y * c + predicted, minlength=c * c)
    if distributed:
        dist.all_reduce(counts)
        if c:
            dist.all_reduce(confusion)
    n = counts[:, 2].clamp(min=1)
    result: dict[str, list] = {"class_il": (counts[:, 0] / n).tolist(), "task_il": (counts[:, 1] / n).tolist()}
    if c:
        result["confusion"] = confusion.view(len(tasks), c, c).tolist()
    return result
