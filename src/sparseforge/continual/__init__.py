"""Continual-learning core in plain PyTorch: scenarios, replay buffer, evaluation and metrics."""

from sparseforge.continual.scenarios import IID, ClassIncremental, Scenario, Task, TaskIncremental

__all__ = ["IID", "ClassIncremental", "Scenario", "Task", "TaskIncremental"]
