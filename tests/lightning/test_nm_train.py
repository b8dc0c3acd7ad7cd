"""N:M through the real framework: presets, summary.json, checkpoint/resume, one-line errors."""

from __future__ import annotations

import csv
import json

import lightning.pytorch as pl
import pytest
import torch

from sparseforge.sparsity.nm import dense_weight, group_counts, nm_layers, nm_parametrization
from sparseforge.train import build, train
from tests.helpers.cli import run_cli
from tests.helpers.config import compose_config
from tests.helpers.fake_data import write_cifar, write_mnist_like

FAKE_CIFAR = ["dataset.verify_checksums=false", "logger=csv", "data.batch_size=16", "data.eval_batch_size=50"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset,pattern,mode",
    [
        ("pgf_nm_vit_cifar100", "1:32", "mdgf"),
        ("srste_nm_vit_cifar100", "1:32", "srste"),
        ("pgf_nm_resnet18_cifar100", "1:8", "sdgf"),
    ],
)
def test_presets_run_end_to_end_on_tiny_cifar100(tmp_path, data_dir, preset, pattern, mode):
    write_cifar(data_dir, num_classes=100, n_train=100, n_test=50)
    run_dir = tmp_path / "run"
    cfg = compose_config([f"+experiment={preset}", "debug=fdr", f"paths.data_dir={data_dir}", *FAKE_CIFAR], run_dir)
    train(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    sp, flops = summary["sparsity"], summary["flops"]
    n, m = map(int, pattern.split(":"))
    assert sp["method"] == "nm" and sp["mode"] == mode and sp["target"] == pattern
    assert sp["final_pattern"] == pattern and sp["at_target"]
    assert sp["density"] == n / m  # exact: every group keeps N of M (random init has no zero weights)
    assert all(layer["density"] == n / m for layer in sp["layers"].values())
    if preset.startswith("pgf_nm_vit") or preset.startswith("srste"):
        assert len(sp["layers"]) == 24 and all(".mlp.fc" in name for name in sp["layers"])
        assert "head" in sp["dense_layers"] and "patch_embed.proj" in sp["dense_layers"]
    else:
        assert sp["dense_layers"] == ["conv1", "fc"] and len(sp["layers"]) == 19
    for key in ("train_total", "train_relative_to_dense", "inference_relative_to_dense"):
        assert key in flops
    # inference: N/M of the sparse layers' dense FLOPs, everything else dense
    f_sparse = sum(flops["sparse_layers_dense_forward"].values())
    expected = (flops["dense_forward"] - f_sparse + f_sparse * n / m) / flops["dense_forward"]
    assert flops["inference_relative_to_dense"] == pytest.approx(expected)
    assert flops["inference_2to4_hardware_relative_to_dense"] == pytest.approx(
        (flops["dense_forward"] - f_sparse / 2) / flops["dense_forward"]
    )
    assert 0 < flops["train_relative_to_dense"] <= 1.0
    assert (run_dir / "nm_export.pt").exists()
    assert summary["export"]["layers_fp16"] and summary["export"]["semi_structured_here"] == torch.cuda.is_available()


def test_training_flops_follow_our_convention(tmp_path, data_dir):
    """SR-STE at 1:8 from the first step: per trained example 3 x other + (2/8 + 1) x the sparse layers."""
    write_mnist_like(data_dir, n_train=64, n_test=32)
    run_dir = tmp_path / "run"
    cfg = compose_config(
        [
            "dataset=mnist", f"paths.data_dir={data_dir}", "model=mlp", "model.hidden_sizes=[32]", "scenario=iid", "method=finetune",
            "scenario.epochs_per_task=2", "data.batch_size=16", "logger=csv", "sparsity=nm", "sparsity.mode=srste",
            "sparsity.n=1", "sparsity.m=8", "sparsity.include=[features.1]",
        ],
        run_dir,
    )  # fmt: skip
    train(cfg)
    flops = json.loads((run_dir / "summary.json").read_text())["flops"]
    f_total, f_layer = flops["dense_forward"], flops["sparse_layers_dense_forward"]["features.1"]
    assert f_layer == 2 * 784 * 32  # FLOPs = 2 x MACs of the 784->32 linear
    per_example = 3 * (f_total - f_layer) + (2 * 1 / 8 + 1) * f_layer
    assert flops["samples_trained"] == 2 * 64
    assert flops["train_total"] == pytest.approx(128 * per_example)
    assert flops["train_relative_to_dense"] == pytest.approx(per_example / (3 * f_total))


def _nm_rows(run_dir) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [
            {key: value for key, value in row.items() if key.startswith(("nm/", "flops/")) or key in ("step", "epoch")}
            for row in csv.DictReader(f)
            if row.get("nm/alpha")
        ]


def test_schedule_values_are_logged_only_where_a_row_is_written(tmp_path, data_dir, monkeypatch):
    # Logging the five schedule values every step cost ~3.5 ms per step (Lightning's bookkeeping),
    # though only every log_every_n_steps-th value is written: the rows must not change.
    from sparseforge.lightning import nm_sparsity

    write_mnist_like(data_dir, n_train=200, n_test=20)
    overrides = [*_mlp_overrides(data_dir, "mdgf"), "trainer.log_every_n_steps=3"]  # alpha moves every step
    calls = {}
    original = pl.LightningModule.log_dict

    def counting_log_dict(self, values, *args, **kwargs):
        if "nm/alpha" in values:
            calls[run] = calls.get(run, 0) + 1
        return original(self, values, *args, **kwargs)

    monkeypatch.setattr(pl.LightningModule, "log_dict", counting_log_dict)
    rows = {}
    for run in ("every_step", "written_rows"):
        with monkeypatch.context() as patch:
            if run == "every_step":
                patch.setattr(nm_sparsity, "logger_writes_at_this_batch", lambda trainer: True)
            train(compose_config(overrides, tmp_path / run))
        rows[run] = _nm_rows(tmp_path / run)
    steps = 4 * 4  # 4 epochs of 200 / 50 batches
    assert calls["every_step"] == steps
    assert calls["written_rows"] == steps // 3 + 4 - 1  # the rows, and each epoch's last batch (step 12 is both)
    assert len(rows["written_rows"]) == steps // 3
    assert rows["written_rows"] == rows["every_step"]
    assert len({row["nm/alpha"] for row in rows["written_rows"]}) > 1  # the schedule moved between rows


# -- checkpoint and resume --------------------------------------------------------------------------
class Interrupted(RuntimeError):
    pass


class StopAtEpoch(pl.Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise Interrupted(f"stopped at epoch {self.epoch}")


class PhaseProbe(pl.Callback):
    """Records the N:M phase every batch trains in (runs after the NM callback set the clock)."""

    def __init__(self):
        self.phases: dict[int, tuple] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        layer = next(iter(nm_layers(pl_module.model).values()))
        phase = nm_parametrization(layer).phase()
        self.phases[trainer.global_step] = (phase.pattern, phase.alpha)


def _mlp_overrides(data_dir, mode: str) -> list[str]:
    extra = {
        "sdgf": ["sparsity.mode=sdgf", "sparsity.dense_fraction=0.125"],
        "mdgf": ["sparsity.mode=mdgf", "sparsity.mdgf.decay=exponential", "sparsity.mdgf.end_fraction=0.75"],
    }[mode]
    return [
        "dataset=mnist", f"paths.data_dir={data_dir}", "model=mlp", "model.hidden_sizes=[64,32]", "scenario=iid", "method=finetune",
        "scenario.epochs_per_task=4", "data.batch_size=50", "logger=csv", "optimizer=adam", "optimizer.lr=0.01",
        "sparsity=nm", "sparsity.n=1", "sparsity.m=8", "sparsity.include=[features.1,features.3]",
        "trainer.enable_progress_bar=false", *extra,
    ]  # fmt: skip


def _fit(cfg, *extra_callbacks):
    run = build(cfg)
    run.trainer.callbacks.extend(extra_callbacks)
    run.trainer.fit(run.method, datamodule=run.datamodule, ckpt_path=run.ckpt_path)
    return run


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sdgf", "mdgf"])
def test_masks_and_schedule_position_survive_checkpoint_and_resume(tmp_path, data_dir, mode):
    write_mnist_like(data_dir, n_train=200, n_test=50)  # 4 steps per epoch, 16 in all
    overrides = _mlp_overrides(data_dir, mode)

    straight_probe = PhaseProbe()
    straight = _fit(compose_config(overrides, tmp_path / "straight"), straight_probe)
    initial_bias = None

    cut_dir = tmp_path / "cut"
    first = build(compose_config(overrides, cut_dir))
    initial_bias = first.method.model.features[1].bias.detach().clone()
    first.trainer.callbacks.append(StopAtEpoch(2))
    with pytest.raises(Interrupted):
        first.trainer.fit(first.method, datamodule=first.datamodule)
    saved = torch.load(cut_dir / "checkpoints" / "last.ckpt", weights_only=False)
    prefix = "model.features.1.parametrizations.weight"
    assert int(saved["state_dict"][f"{prefix}.0.clock"]) == 7  # the clock of the last batch before the save
    assert int(saved["state_dict"][f"{prefix}.0.total"]) == 16

    resumed_probe = PhaseProbe()
    resumed = _fit(compose_config([*overrides, "ckpt_path=auto"], cut_dir), resumed_probe)

    assert sorted(resumed_probe.phases) == list(range(8, 16))  # resumed exactly at step 8
    assert {t: straight_probe.phases[t] for t in range(8, 16)} == resumed_probe.phases
    if mode == "sdgf":  # stages start at steps 2, 5, 9, 12: the resume lands mid-stage (4:8)
        assert resumed_probe.phases[8] == ("4:8", 0.0) and resumed_probe.phases[12] == ("1:8", 0.0)
    else:
        assert 0.0 < resumed_probe.phases[8][1] < 1.0 and resumed_probe.phases[12] == ("1:8", 0.0)

    a, b = straight.method.model, resumed.method.model
    for name in ("features.1", "features.3"):
        la, lb = dict(a.named_modules())[name], dict(b.named_modules())[name]
        assert torch.equal(dense_weight(la), dense_weight(lb)), name
        assert nm_parametrization(lb).position() == nm_parametrization(la).position() == (15, 16)
        la.eval(), lb.eval()
        assert torch.equal(la.weight, lb.weight)
        assert bool((group_counts(lb.weight, 8) == 1).all())
    assert not torch.equal(b.features[1].bias.detach(), initial_bias)  # biases of sparse layers train
    nm_a = next(c for c in straight.trainer.callbacks if type(c).__name__ == "NMSparsityCallback")
    nm_b = next(c for c in resumed.trainer.callbacks if type(c).__name__ == "NMSparsityCallback")
    assert nm_b.flops.state_dict() == nm_a.flops.state_dict()  # FLOPs counted once per example across the cut

    # the callback's nm_export.pt loads into the plain architecture and computes the same outputs
    from sparseforge.models import create_model
    from sparseforge.sparsity.nm.export import load_export

    plain = create_model("mlp", num_classes=10, in_chans=1, image_size=28, hidden_sizes=[64, 32])
    load_export(torch.load(tmp_path / "straight" / "nm_export.pt", weights_only=False), plain)
    x = torch.randn(8, 1, 28, 28)
    assert torch.equal(plain.eval()(x), a.eval()(x))


# -- one-line errors -------------------------------------------------------------------------------
def test_indivisible_layer_is_one_line_on_the_command_line(tmp_path):
    result = run_cli(
        [
            "sparsity=nm",
            "sparsity.include=null",
            "sparsity.m=8",
            "sparsity.n=1",
            "logger=none",
            f"paths.output_dir={tmp_path / 'run'}",
        ]
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: config error: sparsity.include: layer features.3 has input dimension 100, not divisible by M=8 "
        "(allowed: exclude it (sparsity.exclude=[features.3]), pick another M, or sparsity.indivisible=dense)"
    ]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_bad_nm_values_fail_before_training(tmp_path):
    from sparseforge.errors import ConfigError

    cfg = compose_config(["sparsity=nm", "sparsity.n=4", "sparsity.m=4", "sparsity.include=null"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"sparsity\.n: N:M needs integers 0 < N < M"):
        build(cfg)
    cfg = compose_config(
        ["sparsity=nm", "sparsity.mode=mdgf", "sparsity.dense_fraction=0.5", "sparsity.mdgf.end_fraction=0.3"],
        tmp_path / "run",
    )
    with pytest.raises(ConfigError, match=r"sparsity\.mdgf\.end_fraction"):
        build(cfg)


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_two_ranks_keep_identical_masks_and_schedule(tmp_path, data_dir):
    write_mnist_like(data_dir, n_train=200, n_test=50)
    overrides = [o for o in _mlp_overrides(data_dir, "sdgf") if not o.startswith("logger=")]
    proc = run_cli(
        [*overrides, "hardware=ddp_cpu", "logger=csv", "run_name=nm_ddp", "print_config=false"],
        env={"SPARSEFORGE_ROOT": str(tmp_path)},
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    summary = json.loads((tmp_path / "outputs" / "nm_ddp" / "summary.json").read_text())
    sp, flops = summary["sparsity"], summary["flops"]
    assert summary["status"] == "completed" and summary["config"]["trainer"]["devices"] == 2
    assert sp["masks_checked_identical_on_ranks"] == 2  # on_train_end compared fingerprints across ranks
    assert sp["final_pattern"] == "1:8" and sp["density"] == 1 / 8
    assert sp["position"]["total"] == 8  # 2 ranks x 25 examples per batch: 2 steps per epoch, 4 epochs
    assert flops["samples_trained"] == 4 * 200  # both ranks' examples, every epoch
