"""The open data pipeline through the real config and ``train()``: a disk-backed ImageFolder in
class-IL with replay, the ``augment=`` option, batch mixing into soft targets, and the one-line
errors; the per-image augmentation is the same with loader workers and across a resume."""

from __future__ import annotations

import math

import pytest
import torch

from sparseforge.errors import ConfigError, DataNotFoundError
from sparseforge.methods.er import ER
from sparseforge.train import train
from tests.helpers import fake_data
from tests.helpers.cl import QUIET, Crash, one_thread, summary
from tests.helpers.config import compose_config
from tests.lightning.test_cl_resume import comparable, weights

MIXUP = (
    "data.batch_transform={_target_:timm.data.Mixup,_partial_:true,mixup_alpha:0.8,cutmix_alpha:1.0,"
    "switch_prob:0.5,label_smoothing:0.1}"
)


def image_folder(root, *extra) -> list[str]:
    """A 2-task class-IL stream over a 4-class folder of PNGs (24 training images, 32 pixels)."""
    return [
        *QUIET,
        "dataset=image_folder",
        f"dataset.root={root}",
        "dataset.image_size=32",
        "model=small_cnn",
        "scenario.n_tasks=2",
        "scenario.epochs_per_task=2",
        "data.batch_size=5",
        "method.buffer_size=8",
        *extra,
    ]


@pytest.mark.parametrize("method", ["er", "derpp"])
def test_disk_backed_class_il_with_replay_stores_the_centre_views(tmp_path, method):
    root = fake_data.write_image_folder(tmp_path / "images")
    with one_thread():
        train(compose_config(image_folder(root, f"method={method}"), output_dir=tmp_path / "run"))
    s = summary(tmp_path / "run")
    assert s["status"] == "completed" and s["cl"]["completed_tasks"] == 2
    assert all(0.0 <= a <= 1.0 for a in s["cl"]["acc_matrix"][1])
    logits = 4 * 4 if method == "derpp" else 0  # DER++ also stores 4 float logits
    assert s["replay"]["bytes_per_sample"] == 3 * 32 * 32 + 2 * 8 + logits
    # every stored input is the uint8 centre view of a training image of the tasks seen
    buffer = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["method_state"]["buffer"]
    from sparseforge.data import ImageFolder

    views = ImageFolder(root, image_size=32).load(True)
    all_views = views.raw(torch.arange(len(views)))
    for x, y in zip(buffer["x"], buffer["y"], strict=True):
        matches = (all_views == x).flatten(1).all(1)
        assert matches.any() and bool((views.y[matches] == y).all())


def test_the_randaugment_option_replaces_the_transform_and_runs(tmp_path, data_dir):
    fake_data.write_cifar(data_dir, 10)
    overrides = [
        "dataset=cifar10",
        "dataset.verify_checksums=false",
        "augment=randaugment",
        "debug=fdr",
        "data.batch_size=8",
        "method=er",
        "method.buffer_size=20",
        f"paths.data_dir={data_dir}",
    ]
    cfg = compose_config(overrides, output_dir=tmp_path / "run")
    (transform,) = cfg.dataset.train_transform  # replaced whole, not merged with the crop+flip
    assert transform._target_ == "timm.data.create_transform" and transform.auto_augment == "rand-m15-n2"
    assert transform.input_size == 32 and transform.normalize is False
    metrics = train(cfg)
    assert summary(tmp_path / "run")["status"] == "completed" and 0.0 <= metrics["test/acc"] <= 1.0


def test_the_vit_recipe_is_pure_config_mixup_trains_er_on_soft_targets(tmp_path, data_dir, monkeypatch):
    """RandAugment + Mixup/CutMix + label smoothing from overrides alone; ER's current batch
    trains on soft targets, its replayed rows on their labels, with a finite loss."""
    fake_data.write_cifar(data_dir, 10)
    seen = []
    observe = ER.observe

    def recording(self, batch):
        loss = observe(self, batch)
        seen.append((batch.target, batch.y, float(loss), self.buffer.is_empty))
        return loss

    monkeypatch.setattr(ER, "observe", recording)
    overrides = [
        *QUIET,
        "dataset=cifar10",
        "dataset.verify_checksums=false",
        "augment=randaugment",
        MIXUP,
        "scenario.n_tasks=2",
        "scenario.epochs_per_task=1",
        "trainer.limit_train_batches=3",
        "data.batch_size=7",  # odd: timm's Mixup wants pairs
        "method=er",
        "method.buffer_size=20",
        f"paths.data_dir={data_dir}",
    ]
    with one_thread():
        train(compose_config(overrides, output_dir=tmp_path / "run"))
    assert summary(tmp_path / "run")["status"] == "completed"
    assert len(seen) == 6 and not seen[-1][3]  # replaying by the end
    for target, y, loss, _ in seen:
        assert target.shape == (7, 10) and target.dtype == torch.float32
        assert torch.allclose(target.sum(1), torch.ones(7)) and float(target.min()) > 0  # smoothed
        above_floor = torch.nonzero(target > 0.1 / 10 + 1e-6)[:, 1]
        assert set(above_floor.tolist()) <= set(y.tolist())  # mixtures of this batch's labels only
        assert math.isfinite(loss)
    # mixed: rows that hold two classes above the smoothing floor
    assert all(bool(((target > 0.1 / 10 + 1e-6).sum(1) == 2).any()) for target, *_ in seen)


def test_a_method_on_hard_labels_refuses_a_batch_transform_in_one_line(tmp_path, data_dir):
    fake_data.write_cifar(data_dir, 10)
    run_dir = tmp_path / "run"
    overrides = [*QUIET, "dataset=cifar10", "dataset.verify_checksums=false", MIXUP, "method=derpp"]
    with pytest.raises(ConfigError) as err:
        train(compose_config([*overrides, f"paths.data_dir={data_dir}"], output_dir=run_dir))
    assert str(err.value).startswith("config error: data.batch_transform: method derpp") and "\n" not in str(err.value)
    assert not run_dir.exists()


def test_an_unset_or_wrong_root_is_one_line_before_any_work(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"^config error: dataset.root: has no value"):
        train(compose_config([*QUIET, "dataset=image_folder"], output_dir=run_dir))
    with pytest.raises(DataNotFoundError) as err:
        train(compose_config(image_folder(tmp_path / "nowhere", "method=er"), output_dir=run_dir))
    assert "/train/<class>/<image>" in str(err.value) and "\n" not in str(err.value)
    assert not run_dir.exists()


@pytest.mark.slow
def test_per_image_augmentation_is_the_same_with_loader_workers(tmp_path):
    root = fake_data.write_image_folder(tmp_path / "images")
    runs = {}
    with one_thread():
        for workers in (0, 2):
            out = tmp_path / f"workers{workers}"
            train(compose_config(image_folder(root, "method=er", f"data.num_workers={workers}"), output_dir=out))
            runs[workers] = out
    assert comparable(runs[0]) == comparable(runs[2])
    wa, wb = weights(runs[0]), weights(runs[2])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_resume_inside_an_epoch_of_a_disk_backed_run_is_exact(tmp_path):
    """Task 1's first epoch (steps 7-9 at 3 batches per epoch): per-image augmentation of the
    skipped batches and of replayed examples must not shift any RNG."""
    root = fake_data.write_image_folder(tmp_path / "images")
    common = [
        *image_folder(root, "method=er", "callbacks=default", "model.channels=[8,16,16]"),
        "callbacks.model_checkpoint.every_n_train_steps=2",
    ]
    crash = ["+callbacks.crash._target_=tests.helpers.cl.crash_at_step", "+callbacks.crash.step=8"]
    with one_thread():
        train(compose_config(common, output_dir=tmp_path / "full"))
        with pytest.raises(Crash):
            train(compose_config([*common, *crash], output_dir=tmp_path / "part"))
        train(compose_config([*common, "ckpt_path=auto"], output_dir=tmp_path / "part"))
    assert summary(tmp_path / "part")["status"] == "completed"
    assert comparable(tmp_path / "part") == comparable(tmp_path / "full")
    wa, wb = weights(tmp_path / "full"), weights(tmp_path / "part")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    "transform, says",
    [
        ("[{_target_:torchvision.transforms.RandomHorizontalFlip}]", "fails on the dataset's images"),
        (
            "[{_target_:torchvision.transforms.ToTensor},{_target_:torchvision.transforms.Normalize,mean:[0.5],std:[0.1]}]",
            "normalize: false",
        ),
        (
            "[{_target_:sparseforge.data.transforms.RandomCropFlip},{_target_:torchvision.transforms.ToTensor}]",
            "before",
        ),
    ],
    ids=["no_tensor", "normalises_itself", "per_image_after_batched"],
)
def test_a_broken_transform_is_one_line_before_any_work(tmp_path, transform, says):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as err:
        train(compose_config([*QUIET, f"dataset.train_transform={transform}"], output_dir=run_dir))
    message = str(err.value)
    assert message.startswith("config error: dataset.train_transform:") and says in message and "\n" not in message
    assert not run_dir.exists()


@pytest.mark.parametrize("method", ["icarl", "agem", "ewc_on"])
def test_baselines_that_read_training_examples_run_on_a_disk_backed_dataset(tmp_path, method):
    root = fake_data.write_image_folder(tmp_path / "images")
    overrides = [o for o in image_folder(root, f"method={method}") if method != "ewc_on" or "buffer_size" not in o]
    with one_thread():
        train(compose_config(overrides, output_dir=tmp_path / "run"))
    s = summary(tmp_path / "run")
    assert s["status"] == "completed" and s["cl"]["completed_tasks"] == 2


@pytest.mark.parametrize("method", ["finetune", "er"])
def test_loss_bce_trains_on_binary_cross_entropy_of_the_targets(tmp_path, monkeypatch, method):
    """loss=bce: each step's loss is timm's binary cross-entropy of the logits against the one-hot
    labels (ER: of the current and replayed rows), not cross-entropy."""
    import torch.nn.functional as F

    from sparseforge.methods.base import ContinualMethod

    seen = []
    original = ContinualMethod.classification_loss

    def recording(self, logits, target):
        loss = original(self, logits, target)
        seen.append((logits.detach(), target, float(loss)))
        return loss

    monkeypatch.setattr(ContinualMethod, "classification_loss", recording)
    overrides = [*QUIET, f"method={method}", "loss=bce", "debug=fdr"]
    with one_thread():
        train(compose_config(overrides + (["method.buffer_size=50"] if method == "er" else []), output_dir=tmp_path))
    assert summary(tmp_path)["status"] == "completed" and seen
    for logits, target, loss in seen:
        one_hot = F.one_hot(target, logits.shape[1]).float()
        assert loss == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, one_hot)), rel=1e-6)
        assert loss != pytest.approx(float(F.cross_entropy(logits, target)), rel=1e-3)


def test_a_method_with_its_own_losses_refuses_a_loss_group(tmp_path):
    from sparseforge.train import build

    with pytest.raises(ConfigError, match=r"^config error: loss: method derpp computes its own losses"):
        build(compose_config([*QUIET, "method=derpp", "loss=bce"], output_dir=tmp_path))
