"""evaluate_tasks: class-IL and task-IL accuracy per task, and a per-task context around each
task's scoring (how a method with one subnetwork per task is evaluated)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from sparseforge.continual.evaluation import evaluate_tasks
from sparseforge.continual.scenarios import TaskIncremental
from sparseforge.data.base import ImageTensors


def test_a_task_context_is_entered_around_each_tasks_scoring_and_left_after():
    # 4 classes, two tasks; the "image" is one pixel holding its class
    y = torch.arange(4).repeat(10)
    test = ImageTensors(y.view(-1, 1, 1, 1).to(torch.uint8), y)
    tasks = TaskIncremental(n_tasks=2).build(y, y, 4, seed=0)
    model = nn.Linear(1, 4, bias=False)
    with torch.no_grad():
        model.weight.zero_()  # on its own the model scores every class 0: argmax picks class 0
    heads = {0: torch.tensor([[0.0], [1.0], [-1.0], [-1.0]]), 1: torch.tensor([[-1.0], [-1.0], [0.0], [1.0]])}
    entered = []

    @contextmanager
    def task_weights(task):  # task 0's head separates pixels 0 and 1; task 1's always says class 3
        entered.append(task.id)
        saved = model.weight.detach().clone()
        with torch.no_grad():
            model.weight.copy_(heads[task.id])
        yield
        with torch.no_grad():
            model.weight.copy_(saved)

    score = lambda x: model(x.float().flatten(1))  # noqa: E731

    def inputs(index, batch_size, device, task=None):
        return (test.x[chunk].to(device) for chunk in index.split(batch_size))

    plain = evaluate_tasks(score, inputs, test.y, tasks, torch.device("cpu"))
    assert plain == {"class_il": [0.5, 0.0], "task_il": [0.5, 0.5]}  # ties: the first class wins
    with_context = evaluate_tasks(score, inputs, test.y, tasks, torch.device("cpu"), task_context=task_weights)
    assert entered == [0, 1]
    assert with_context == {"class_il": [1.0, 0.5], "task_il": [1.0, 0.5]}
    assert torch.count_nonzero(model.weight) == 0  # the working weights are back
