"""Every split preset composes to the documented benchmark and runs its whole task sequence
(debug=fdr: one batch per task) on tiny files in the dataset's real format."""

from __future__ import annotations

import pytest

from sparseforge.train import train
from tests.helpers.cl import QUIET, one_thread, summary
from tests.helpers.config import compose_config
from tests.helpers.fake_data import write_cifar, write_mnist_like, write_tiny_imagenet

# preset: (dataset target, model name, n_tasks, epochs per task, batch size, fake-data writer)
PRESETS = {
    "split_digits": ("Digits", "mlp", 5, 5, 32, None),
    "split_mnist": ("MNIST", "mlp", 5, 1, 32, lambda d: write_mnist_like(d, "MNIST")),
    "split_fmnist": ("FashionMNIST", "mlp", 5, 1, 32, lambda d: write_mnist_like(d, "FashionMNIST")),
    "split_cifar10": ("CIFAR10", "resnet18_cifar", 5, 50, 32, lambda d: write_cifar(d, 10)),
    "split_cifar100_10": ("CIFAR100", "resnet18_cifar", 10, 50, 32, lambda d: write_cifar(d, 100, n_train=200)),
    "split_cifar100_20": ("CIFAR100", "resnet18_cifar", 20, 50, 32, lambda d: write_cifar(d, 100, n_train=200)),
    "split_tinyimagenet": (
        "TinyImageNet",
        "resnet18_cifar",
        10,
        100,
        32,
        lambda d: write_tiny_imagenet(d, per_class_train=1),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(PRESETS))
def test_split_preset(tmp_path, data_dir, preset):
    dataset, model, n_tasks, epochs, batch, write = PRESETS[preset]
    overrides = [f"+experiment={preset}", *QUIET, "method=derpp", "method.buffer_size=20", "callbacks=none"]
    if write is not None:
        write(data_dir)
        overrides += [f"paths.data_dir={data_dir}"]
    if dataset.startswith("CIFAR"):
        overrides += ["dataset.verify_checksums=false"]
    cfg = compose_config(overrides, output_dir=tmp_path / "preset")
    # the benchmark as documented in the preset
    assert cfg.experiment_name == preset
    assert cfg.dataset._target_.endswith(dataset) and cfg.model.name == model
    assert cfg.scenario.n_tasks == n_tasks and cfg.scenario.epochs_per_task == epochs
    assert cfg.data.batch_size == batch and cfg.method.minibatch_size == batch
    if model == "resnet18_cifar":
        assert cfg.model.width == 64 and cfg.optimizer.lr == 0.03 and cfg.optimizer.momentum == 0
    # the whole sequence, one batch per task, with a narrow network to keep CI fast
    run = compose_config(
        [*overrides, "debug=fdr", *(["model.width=8"] if model == "resnet18_cifar" else [])],
        output_dir=tmp_path / "run",
    )
    with one_thread():
        train(run)
    cl = summary(tmp_path / "run")["cl"]
    assert cl["n_tasks"] == n_tasks and cl["completed_tasks"] == n_tasks
    assert all(v is not None for v in cl["acc_matrix"][-1])
