"""Topology update rules, one small class per file, registered in ``RULES`` by name.

Step-triggered: static, set, rigl, unfired, momentum. Epoch-triggered: tdm (SparCL).

To add a rule: subclass ``UpdateRule`` (or ``DropAndGrow`` for a new grow criterion) in its own
file with its settings in a nested ``Options`` dataclass, decorate it with
``@RULES.register("name")``, import it here, and add ``configs/sparsity/<name>.yaml``.
"""

from sparseforge.sparsity.rules.base import RULES, DropAndGrow, UpdateRule
from sparseforge.sparsity.rules.momentum import SNFSMomentum
from sparseforge.sparsity.rules.rigl import RigL
from sparseforge.sparsity.rules.set import SET
from sparseforge.sparsity.rules.static import Static
from sparseforge.sparsity.rules.tdm import TDM
from sparseforge.sparsity.rules.unfired import Unfired

__all__ = ["RULES", "DropAndGrow", "RigL", "SET", "SNFSMomentum", "Static", "TDM", "Unfired", "UpdateRule"]
