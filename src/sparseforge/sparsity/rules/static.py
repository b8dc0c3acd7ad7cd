"""``static``: the random-pruning baseline (Liu et al., ICLR 2022). The masks never change."""

from sparseforge.sparsity.rules.base import UpdateRule


class Static(UpdateRule):
    name = "static"
    changes_topology = False
