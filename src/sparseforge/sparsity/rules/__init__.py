"""Topology update rules, one small class per file. ``RULES[name](**options)`` builds one.

Step-triggered: static, set, rigl, unfired, momentum. Epoch-triggered: tdm (SparCL).

To add a rule: subclass ``UpdateRule`` (or ``DropAndGrow`` for a new grow criterion) in its own
file and register it here.
"""

from sparseforge.sparsity.rules.base import DropAndGrow, UpdateRule
from sparseforge.sparsity.rules.momentum import Momentum
from sparseforge.sparsity.rules.rigl import RigL
from sparseforge.sparsity.rules.set import SET
from sparseforge.sparsity.rules.static import Static
from sparseforge.sparsity.rules.tdm import TDM
from sparseforge.sparsity.rules.unfired import Unfired

RULES: dict[str, type[UpdateRule]] = {r.name: r for r in (Static, SET, RigL, Unfired, Momentum, TDM)}

__all__ = ["RULES", "DropAndGrow", "Momentum", "RigL", "SET", "Static", "TDM", "Unfired", "UpdateRule"]
