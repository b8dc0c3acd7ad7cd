"""SHARP (Sparsity and Hidden Activation RePlay, Gurbuz, Moorman & Dovrolis 2023), in plain PyTorch.

- ``units``: unit ranks, activation-mass selection with the annealed cosine threshold, freezing;
- ``rewire``: kernel-level random masks, drop idle -> active links, regrow into idle units;
- ``memory``: 8-bit per-class short-term memory of cut-off activations, replay sampling;
- ``knn``: long-term memory of masked representations and the per-class-mask kNN classifier;
- ``supcon``: the single-view supervised contrastive loss;
- ``learner``: the per-phase and end-of-episode procedures over a SHARP network.

The Lightning glue is ``sparseforge.methods.sharp``; the networks are ``sparseforge.models.sharp``.
"""

from sparseforge.continual.sharp.learner import SharpLearner

__all__ = ["SharpLearner"]
