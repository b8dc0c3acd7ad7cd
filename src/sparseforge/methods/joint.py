"""Joint training: task ``t`` trains on the data of every task up to ``t``. The upper bound."""

import torch

from sparseforge.methods.base import METHODS, ContinualMethod


@METHODS.register("joint")
class Joint(ContinualMethod):
    supports_soft_targets = True
    needs_task_boundaries = True  # retrains on every earlier task at each task's start: not one pass

    def training_indices(self, task, tasks):
        # unique: in a blurry stream a class (and its images) recurs across tasks.
        return torch.unique(torch.cat([t.train_index for t in tasks[: task.id + 1]]))
