"""Methods: one small LightningModule per method, all extending :class:`ContinualMethod`."""

from sparseforge.methods.base import ContinualMethod
from sparseforge.methods.der import DER
from sparseforge.methods.derpp import DERPP
from sparseforge.methods.er import ER
from sparseforge.methods.er_ace import ERACE
from sparseforge.methods.finetune import Finetune
from sparseforge.methods.joint import Joint
from sparseforge.methods.replay import ReplayMethod

__all__ = ["ContinualMethod", "DER", "DERPP", "ER", "ERACE", "Finetune", "Joint", "ReplayMethod"]
