"""``unfired`` (CL-with-DST's ``random_unfired``, ITOP-style): grow at random among weights never
active so far; when those run out, the rest are grown at random among the other inactive ones."""

from __future__ import annotations

from sparseforge.sparsity.rules.base import RULES, DropAndGrow
from sparseforge.sparsity.rules.set import random_scores


@RULES.register("unfired")
class Unfired(DropAndGrow):
    def grow_scores(self, sparsifier, name, position, dense_grad):
        never_fired = ~sparsifier.masks.fired[name]
        return random_scores(sparsifier, name, position).add_(never_fired)  # unfired rank above [0, 1)
