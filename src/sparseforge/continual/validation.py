"""Hold out a validation split of the training examples, for model selection.

Plain PyTorch over label tensors. The split is stratified: every class gives
``round(fraction * n_c)`` of its ``n_c`` training examples to validation, drawn by one generator
seeded with ``seed``, so it is a function of (labels, fraction, seed) only, identical on every
DDP rank and in every resume. It is taken over the union of all tasks' training examples, so an
example that several tasks train on (blurry scenarios) is held out for all of them: no task ever
trains on an example that another task validates on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from sparseforge.continual.scenarios import Task
from sparseforge.errors import ConfigError


def stratified_split(index: torch.Tensor, labels: torch.Tensor, fraction: float, seed: int):
    """``index`` (positions into ``labels``) cut into (train, val), both sorted, disjoint, and
    together ``index``; per class ``round(fraction * n_c)`` examples go to ``val``."""
    if not 0.0 <= float(fraction) < 1.0:
        raise ConfigError("data.val_fraction", f"must be in [0, 1), got {fraction}", "0 (no validation split) to < 1")
    index = torch.unique(index)  # sorted, so the draw does not depend on the order tasks list it
    if fraction == 0.0:
        return index, index[:0]
    g = torch.Generator().manual_seed(int(seed))
    held_out = []
    classes = labels[index]
    for c in torch.unique(classes).tolist():
        members = index[classes == c]
        n_val = round(float(fraction) * len(members))
        if n_val >= len(members):
            raise ConfigError(
                "data.val_fraction",
                f"{fraction} leaves class {c} ({len(members)} training images) with none to train on",
            )
        held_out.append(members[torch.randperm(len(members), generator=g)[:n_val]])
    val = torch.cat(held_out).sort().values
    if len(val) == 0:
        raise ConfigError("data.val_fraction", f"{fraction} of {len(index)} training images holds out none")
    return index[~torch.isin(index, val)], val


def hold_out_validation(tasks: Sequence[Task], labels: torch.Tensor, fraction: float, seed: int) -> list[Task]:
    """Every task with its training examples cut into ``train_index`` and ``val_index``.

    ``fraction == 0`` returns the tasks unchanged (each ``val_index`` empty)."""
    if float(fraction) == 0.0:
        return list(tasks)
    _, val = stratified_split(torch.cat([t.train_index for t in tasks]), labels, fraction, seed)
    out = []
    for task in tasks:
        held = torch.isin(task.train_index, val)
        out.append(dataclasses.replace(task, train_index=task.train_index[~held], val_index=task.train_index[held]))
    return out


def validation_view(task: Task) -> Task:
    """The task with its validation examples where evaluation reads test examples (``test_index``):
    evaluate it on the training split's labels and inputs."""
    return dataclasses.replace(task, test_index=task.val_index)
