"""Continual-learning core in plain PyTorch: scenarios, replay buffer, evaluation and metrics."""

from sparseforge.continual.buffer import ReplayBuffer
from sparseforge.continual.scenarios import IID, Blurry, ClassIncremental, Scenario, Task, TaskIncremental

__all__ = ["IID", "Blurry", "ClassIncremental", "ReplayBuffer", "Scenario", "Task", "TaskIncremental"]
