"""``static``: the random-pruning baseline (Liu et al., ICLR 2022). The masks never change."""

from sparseforge.sparsity.rules.base import RULES, UpdateRule


@RULES.register("static")
class Static(UpdateRule):
    changes_topology = False
