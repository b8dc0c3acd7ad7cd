"""sparseforge's SLURM launcher (``hardware=slurm``). Hydra only loads launcher classes defined
in the ``hydra_plugins`` namespace; the sweep logic itself is in ``sparseforge.sweeps``."""
