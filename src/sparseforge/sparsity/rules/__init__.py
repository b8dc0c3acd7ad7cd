"""Topology update rules, one small class per file. ``RULES[name](**options)`` builds one.

To add a rule: subclass ``UpdateRule`` (or ``DropAndGrow`` for a new grow criterion) in its own
file and register it here.
"""

from sparseforge.sparsity.rules.base import DropAndGrow, UpdateRule
from sparseforge.sparsity.rules.momentum import Momentum
from sparseforge.sparsity.rules.rigl import RigL
from sparseforge.sparsity.rules.set import SET
from sparseforge.sparsity.rules.static import Static
from sparseforge.sparsity.rules.unfired import Unfired

RULES: dict[str, type[UpdateRule]] = {r.name: r for r in (Static, SET, RigL, Unfired, Momentum)}

__all__ = ["RULES", "DropAndGrow", "Momentum", "RigL", "SET", "Static", "Unfired", "UpdateRule"]
