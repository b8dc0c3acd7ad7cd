"""sparseforge: dynamic sparse training and sparse continual learning on Hydra + Lightning.

Package map (the folders show the architecture):

- ``sparsity/``   the sparsity engine: masks, layer-wise densities, DST update rules, N:M, FLOPs.
                  Plain PyTorch; it never imports Lightning and can drive a hand-written loop.
- ``continual/``  continual-learning core: scenarios, replay buffer, evaluation, CL metrics.
- ``methods/``    one small LightningModule per method, all sharing ``methods.base``.
- ``data/``       one file per dataset plus the continual datamodule.
- ``models/``     model registry: MLP, small CNN, CIFAR ResNet, timm adapter.
- ``lightning/``  thin glue: callbacks (task loop, sparsity, summary), loggers, checkpoint IO.
- ``config/``     typed config schemas and start-time validation.
- ``train.py``    the entry point: ``train(cfg) -> metrics``.
"""

__version__ = "0.1.0"
