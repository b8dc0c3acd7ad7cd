"""Finetune: plain training on each task in turn. The lower bound of continual learning."""

from sparseforge.methods.base import ContinualMethod


class Finetune(ContinualMethod):
    name = "finetune"
    supports_soft_targets = True
