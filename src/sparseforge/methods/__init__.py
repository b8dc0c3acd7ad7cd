"""Methods: one small LightningModule per method, all extending :class:`ContinualMethod`."""

from sparseforge.methods.base import ContinualMethod
from sparseforge.methods.finetune import Finetune

__all__ = ["ContinualMethod", "Finetune"]
