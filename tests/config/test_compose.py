"""The config tree: every option of every group composes, typed schemas reject bad values at
compose time and name the key, and the presets hold the recipes they promise.

Options are discovered from the configs/ folder, so a new preset or group option is covered
without touching this file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sparseforge.config import config_dir
from tests.helpers.config import compose_config

CONFIGS = Path(config_dir())
NOWHERE = "/nonexistent/run"  # composing never creates the run directory


def compose(overrides):
    return compose_config(overrides, output_dir=NOWHERE)


def _primary_groups() -> set[str]:
    """Groups named in configs/train.yaml's defaults list (selected as group=option)."""
    groups = set()
    for entry in yaml.safe_load((CONFIGS / "train.yaml").read_text())["defaults"]:
        if isinstance(entry, dict):
            for key in entry:
                groups.add(key.replace("optional ", "").replace("override ", "").strip().lstrip("/"))
    return groups


def _override_for(path: Path) -> str:
    rel = path.relative_to(CONFIGS)
    group, name = rel.parent.as_posix(), rel.stem
    if rel.parts[0] == "best_args":  # best_args/<preset>/<method>.yaml is picked by that preset and method
        return f"experiment={rel.parts[1]} method={name}"
    # Groups in the primary defaults list (and Hydra's own, hydra/*) are switched with group=x;
    # the others (experiment, anything new) are appended with +group=x.
    in_list = group in PRIMARY or group.split("/")[0] == "hydra"
    return f"{'' if in_list else '+'}{group}={name}"


PRIMARY = _primary_groups()
# Studies and their arms compose in their study's context, point by point: tests/config/test_studies.py.
STUDY_GROUPS = ("study", "arm")
OPTIONS = sorted(
    _override_for(p)
    for p in CONFIGS.rglob("*.yaml")
    if p.parent != CONFIGS and p.relative_to(CONFIGS).parts[0] not in STUDY_GROUPS
)


def test_discovery_sees_the_groups_of_the_issue():
    groups = {o.lstrip("+").split("=")[0].split("/")[0] for o in OPTIONS}
    required = {
        "dataset",
        "model",
        "sparsity",
        "hardware",
        "logger",
        "trainer",
        "callbacks",
        "paths",
        "experiment",
        "debug",
        "hydra",
        "optimizer",
        "lr_scheduler",
        "scenario",
        "method",
        "data",
    }
    assert required <= groups, required - groups


@pytest.mark.parametrize("override", OPTIONS)
def test_every_group_option_composes_and_resolves(override, tmp_path):
    cfg = compose_config(override.split(" "), output_dir=tmp_path / "run")
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation must resolve
    assert resolved["paths"]["output_dir"] == str(tmp_path / "run")
    assert resolved["dataset"]["_target_"] and resolved["model"]["_target_"]


def test_presets_compose_with_or_without_plus():
    with_plus, without = compose(["+experiment=dense_mnist"]), compose(["experiment=dense_mnist"])
    assert with_plus.experiment_name == without.experiment_name == "dense_mnist"
    assert OmegaConf.to_container(with_plus) == OmegaConf.to_container(without)


def test_dense_cifar100_is_the_standard_recipe():
    cfg = compose(["+experiment=dense_cifar100"])
    assert cfg.dataset._target_.endswith("CIFAR100")
    assert cfg.model.name == "resnet18_cifar" and cfg.model.width == 64
    assert cfg.scenario._target_.endswith("IID") and cfg.scenario.epochs_per_task == 200
    opt = cfg.optimizer
    assert opt._target_ == "torch.optim.SGD"
    assert (opt.lr, opt.momentum, opt.nesterov, opt.weight_decay) == (0.1, 0.9, True, 5e-4)
    assert cfg.lr_scheduler._target_.endswith("CosineAnnealingLR")
    assert OmegaConf.to_container(cfg, resolve=True)["lr_scheduler"]["T_max"] == 200
    assert cfg.data.batch_size == 128


def test_dense_mnist_is_lenet_300_100_on_mnist():
    cfg = compose(["+experiment=dense_mnist"])
    assert cfg.dataset._target_.endswith("MNIST") and not cfg.dataset._target_.endswith("FashionMNIST")
    assert cfg.model.name == "mlp" and list(cfg.model.hidden_sizes) == [300, 100]
    assert cfg.scenario._target_.endswith("IID")


@pytest.mark.parametrize("order", ["preset first", "debug first"])
def test_debug_fdr_wins_over_a_preset(order):
    """experiment precedes debug in the defaults list, whatever the command-line order."""
    overrides = ["+experiment=dense_cifar100", "debug=fdr"]
    cfg = compose(overrides if order == "preset first" else overrides[::-1])
    assert cfg.scenario.epochs_per_task == 1
    assert cfg.trainer.limit_train_batches == 1 and cfg.trainer.max_epochs is None


@pytest.mark.parametrize(
    "override, key",
    [
        ("optimizer.lr=abc", "optimizer.lr"),
        ("optimizer.momentum=fast", "optimizer.momentum"),
        ("data.batch_size=big", "data.batch_size"),
        ("trainer.max_epochs=abc", "trainer.max_epochs"),
        ("scenario.epochs_per_task=1.5x", "scenario.epochs_per_task"),
        ("optimizer.lrr=0.1", "lrr"),  # unknown key
        ("trainer.max_epoch=3", "max_epoch"),  # typo of a known key
    ],
)
def test_typed_schemas_reject_bad_values_naming_the_key(override, key):
    with pytest.raises((HydraException, OmegaConfBaseException)) as err:
        compose([override])
    assert key in str(err.value)


def test_schemas_give_typed_values():
    cfg = compose(["optimizer.lr=0.5", "data.batch_size=64", "trainer.gradient_clip_val=1"])
    assert cfg.optimizer.lr == 0.5 and isinstance(cfg.optimizer.lr, float)
    assert cfg.data.batch_size == 64 and isinstance(cfg.data.batch_size, int)
    assert cfg.trainer.gradient_clip_val == 1.0


def test_data_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSEFORGE_DATA_DIR", str(tmp_path / "elsewhere"))
    cfg = compose(["dataset=cifar10"])
    assert OmegaConf.to_container(cfg, resolve=True)["dataset"]["root"] == str(tmp_path / "elsewhere")
    monkeypatch.delenv("SPARSEFORGE_DATA_DIR")
    monkeypatch.setenv("SPARSEFORGE_ROOT", str(tmp_path))
    cfg = compose(["dataset=cifar10"])
    assert OmegaConf.to_container(cfg, resolve=True)["paths"]["data_dir"] == str(tmp_path / "data")


def test_downloadable_datasets_download_by_default():
    for name in ("mnist", "fashion_mnist", "emnist_letters", "cifar10", "cifar100", "tiny_imagenet"):
        assert compose([f"dataset={name}"]).dataset.download is True, name
    assert compose(["dataset=digits"]).dataset.download is False  # shipped with scikit-learn


@pytest.mark.parametrize(
    "hardware, accelerator, devices, strategy, precision",
    [
        ("cpu", "cpu", 1, "auto", "32-true"),
        ("gpu", "gpu", 1, "auto", "bf16-mixed"),
        ("ddp", "gpu", 2, "ddp", "bf16-mixed"),
        ("ddp_cpu", "cpu", 2, "ddp", "32-true"),
    ],
)
def test_hardware_options(hardware, accelerator, devices, strategy, precision):
    t = compose([f"hardware={hardware}"]).trainer
    assert (t.accelerator, t.devices, t.strategy, t.precision) == (accelerator, devices, strategy, precision)


def test_wandb_settings_come_from_config():
    cfg = compose(
        [
            "+experiment=dense_mnist",
            "tags=[a,b]",
            "logger.wandb.entity=lab",
            "logger.wandb.project=proj",
            "logger.wandb.job_type=eval",
        ]
    )
    w = OmegaConf.to_container(cfg, resolve=True)["logger"]["wandb"]
    assert (w["project"], w["entity"], w["job_type"], w["tags"]) == ("proj", "lab", "eval", ["a", "b"])
    assert w["group"] == "dense_mnist"  # the preset's name groups its runs
    assert w["mode"] == "auto"


def test_trainer_settings_of_the_issue_are_exposed():
    t = compose(
        [
            "trainer.deterministic=true",
            "trainer.gradient_clip_val=0.5",
            "trainer.max_epochs=3",
            "trainer.precision=bf16-mixed",
            "task_loop.eval_every_n_epochs=2",
        ]
    )
    assert t.trainer.deterministic is True and t.trainer.gradient_clip_val == 0.5
    assert t.trainer.max_epochs == 3 and t.trainer.precision == "bf16-mixed"
    assert t.task_loop.eval_every_n_epochs == 2  # the validation interval


def test_the_vit_presets_carry_the_recipes_training_stack():
    from tests.helpers.config import compose_config

    for preset in ("pgf_nm_vit_cifar100", "srste_nm_vit_cifar100"):
        cfg = compose_config([f"+experiment={preset}"])
        (transform,) = cfg.dataset.train_transform
        assert transform._target_ == "timm.data.create_transform" and transform.auto_augment == "rand-m15-n2"
        mixup = cfg.data.batch_transform
        assert mixup._target_ == "timm.data.Mixup" and (mixup.mixup_alpha, mixup.cutmix_alpha) == (0.5, 0.0)
        assert mixup.label_smoothing == 0.0
        assert (cfg.model.kwargs.drop_rate, cfg.model.kwargs.drop_path_rate) == (0.1, 0.1)
        assert "pos_embed" in str(cfg.optimizer_groups)
        assert cfg.loss._target_ == "timm.loss.BinaryCrossEntropy" and cfg.loss.smoothing == 0.0
