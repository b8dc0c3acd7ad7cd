"""Finetune: plain training on each task in turn. The lower bound of continual learning."""

from sparseforge.methods.base import METHODS, ContinualMethod


@METHODS.register("finetune")
class Finetune(ContinualMethod):
    supports_soft_targets = True
