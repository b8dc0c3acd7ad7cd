"""SHARP (Sparsity and Hidden Activation RePlay, Gurbuz, Moorman & Dovrolis 2023).

The algorithm is plain PyTorch, one concern per file:

- ``units``: unit ranks, activation-mass selection with the annealed cosine threshold, freezing;
- ``rewire``: kernel-level random masks, drop idle -> active links, regrow into idle units;
- ``memory``: 8-bit per-class short-term memory of cut-off activations, replay sampling;
- ``knn``: long-term memory of masked representations and the per-class-mask kNN classifier;
- ``supcon``: the single-view supervised contrastive loss;
- ``learner``: the per-phase and end-of-episode procedures over a SHARP network.

``method`` maps it onto the task loop as a ``ContinualMethod`` (``method=sharp``); the networks
are ``sparseforge.models.sharp``.
"""

from sparseforge.methods.sharp.learner import SharpLearner
from sparseforge.methods.sharp.method import Sharp

__all__ = ["Sharp", "SharpLearner"]
