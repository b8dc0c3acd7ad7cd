"""Methods: one small LightningModule per method, all extending :class:`ContinualMethod`.

Each registers itself in ``METHODS`` (``@METHODS.register("name")``), which also stores the Hydra
schema of ``configs/method/<name>.yaml`` generated from the method's ``Options``.
"""

from sparseforge.methods.agem import AGEM
from sparseforge.methods.base import METHODS, ContinualMethod
from sparseforge.methods.cl_dst import CLDST
from sparseforge.methods.der import DER
from sparseforge.methods.derpp import DERPP
from sparseforge.methods.er import ER
from sparseforge.methods.er_ace import ERACE
from sparseforge.methods.ewc_on import OnlineEWC
from sparseforge.methods.finetune import Finetune
from sparseforge.methods.gdumb import GDumb
from sparseforge.methods.icarl import ICaRL
from sparseforge.methods.joint import Joint
from sparseforge.methods.lwf import LwF
from sparseforge.methods.packnet import PackNet
from sparseforge.methods.replay import ReplayMethod
from sparseforge.methods.sharp import Sharp
from sparseforge.methods.si import SynapticIntelligence
from sparseforge.methods.sparcl import SparCL

__all__ = [
    "METHODS",
    "AGEM",
    "CLDST",
    "ContinualMethod",
    "DER",
    "DERPP",
    "ER",
    "ERACE",
    "Finetune",
    "GDumb",
    "ICaRL",
    "Joint",
    "LwF",
    "OnlineEWC",
    "PackNet",
    "ReplayMethod",
    "Sharp",
    "SparCL",
    "SynapticIntelligence",
]
