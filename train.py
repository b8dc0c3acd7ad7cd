"""Train a model from the Hydra configs in configs/: ``python train.py [overrides]``.

Examples::

    python train.py                                   # the embedded default run (offline)
    python train.py +experiment=dense_mnist
    python train.py -m seed=0,1,2 sparsity.density=0.05,0.1
"""

from sparseforge.train import main

if __name__ == "__main__":
    main()
