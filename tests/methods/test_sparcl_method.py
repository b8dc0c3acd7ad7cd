"""SparCL through the real config, Lightning loop and checkpoints, on tiny fake MNIST.

Setup: MLP 784-64-64-10, sparse layers features.1 (50176 weights) and features.3 (4096) at
density 0.25; 2 tasks x 200 examples, batch 20, 6 epochs per task; TDM every 2 epochs with
phases [2, 5] (epoch 0: +1%, epoch 2: back to 25%, epoch 4: swap 1%, epoch 5+: frozen); DDR at
epochs 2 and 4 (30% in total: 30 + 30 examples); DGM refresh every 4 steps.
"""

from __future__ import annotations

import json

import pytest
import torch

from sparseforge.lightning.sparsity_callback import find_sparsifier
from sparseforge.methods.sparcl import SparCLMixin
from sparseforge.train import build, collect_summary, train
from tests.helpers.config import compose_config
from tests.helpers.fake_data import write_mnist_like

SIZES = {"features.1": 784 * 64, "features.3": 64 * 64}
BASE = {"features.1": 12544, "features.3": 1024}  # density 0.25 of each
GROWN = {"features.1": 502, "features.3": 41}  # round(1% of each layer)


def sparcl_overrides(data_dir, *extra: str) -> list[str]:
    return [
        "dataset=mnist",
        f"paths.data_dir={data_dir}",
        "dataset.download=false",
        "model=mlp",
        "model.hidden_sizes=[64,64]",
        "scenario=class_il",
        "scenario.n_tasks=2",
        "scenario.epochs_per_task=6",
        "method=sparcl",
        "method.buffer_size=50",
        "method.ddr.removal_epochs=[2,4]",
        "method.dgm.refresh_every=4",
        "sparsity=sparcl",
        "sparsity.include=[features.*]",
        "sparsity.tdm.every_epochs=2",
        "sparsity.tdm.phase_epochs=[2,5]",
        "data.batch_size=20",
        "optimizer.lr=0.03",
        "optimizer.momentum=0",
        "optimizer.weight_decay=0",
        "logger=none",
        "callbacks=none",
        "hardware=cpu",
        "seed=3",
        *extra,
    ]


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_mnist_like(d, n_train=400, n_test=100)
    return d


@pytest.fixture(scope="module")
def release_run(mnist_dir, tmp_path_factory):
    """One run with every component on, shared by the tests that only inspect it."""
    return fit(sparcl_overrides(mnist_dir), tmp_path_factory.mktemp("release") / "run")


def fit(overrides, run_dir):
    """Build and fit in-process, returning the run (method, datamodule, trainer) and the summary."""
    run = build(compose_config(overrides, run_dir))
    train_indices: list[tuple[int, list[int]]] = []
    original = run.method.observe

    def observe(batch):
        train_indices.append((run.trainer.current_epoch, batch.index.tolist()))
        return original(batch)

    restricted: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    original_logits = run.method.current_ce_logits

    def current_ce_logits(logits):
        out = original_logits(logits)
        restricted.append((run.method.current_task, logits.detach(), out.detach()))
        return out

    run.method.observe = observe
    run.method.current_ce_logits = current_ce_logits
    run.trainer.fit(run.method, datamodule=run.datamodule)
    run.extra["train_indices"] = train_indices
    run.extra["current_ce_logits"] = restricted
    return run


def run_summary(overrides, run_dir) -> dict:
    train(compose_config(overrides, run_dir))
    return json.loads((run_dir / "summary.json").read_text())


def test_ddr_removes_the_configured_counts_from_the_current_task_only_and_never_from_the_buffer(release_run):
    run = release_run
    method, dm = run.method, run.datamodule
    events = method.data_removal.history
    assert [(e["task"], e["epoch"], e["removed"], e["remaining"]) for e in events] == [
        (0, 2, 30, 170),
        (0, 4, 30, 140),
        (1, 2, 30, 170),
        (1, 4, 30, 140),
    ]
    seen: dict[int, set[int]] = {}
    for epoch, index in run.extra["train_indices"]:
        seen.setdefault(epoch, set()).update(index)
    per_epoch = [len(seen[e]) for e in range(12)]
    assert per_epoch == [200, 200, 170, 170, 140, 140] * 2
    for t, task in enumerate(dm.tasks):
        own = set(task.train_index.tolist())
        epochs = range(6 * t, 6 * t + 6)
        assert all(seen[e] <= own for e in epochs)  # only the current task's examples
        gone_at_2 = own - seen[6 * t + 2]
        assert seen[6 * t + 2] == seen[6 * t + 3] and seen[6 * t + 4] == seen[6 * t + 5]
        assert seen[6 * t + 4] <= seen[6 * t + 2] and not gone_at_2 & seen[6 * t + 5]  # removed for good
    # The buffer is never pruned: full, fed with every example trained, and it still holds
    # examples DDR removed later (matched by their raw images).
    buffer = method.buffer
    assert len(buffer) == 50 and buffer.seen == sum(per_epoch)
    train_x = dm.train_data.x.flatten(1)
    stored = buffer.x[buffer.valid].flatten(1)
    ids = {int((train_x == row).all(dim=1).nonzero()[0]) for row in stored}
    removed_task0 = set(dm.tasks[0].train_index.tolist()) - seen[5]
    assert ids & removed_task0
    assert buffer.task[buffer.valid].unique().tolist() == [0, 1]


def test_every_tdm_update_reaches_its_scheduled_density_and_the_schedule_restarts_per_task(release_run):
    summary = collect_summary(release_run)
    epochs = summary["sparcl"]["epochs"]
    assert [(r["task"], r["epoch_in_task"]) for r in epochs] == [(t, e) for t in range(2) for e in range(6)]
    for record in epochs:
        grown = record["epoch_in_task"] < 2  # +1% at the task's start, back to 25% at epoch 2
        expected = {n: BASE[n] + (GROWN[n] if grown else 0) for n in BASE}
        assert record["layer_nnz"] == expected, record
    sp = summary["sparsity"]
    assert sp["layer_nnz"] == BASE and sp["density"] == 0.25
    assert sp["updates"] == 6  # epochs 0, 2, 4 of each task change the mask; epoch 5 is frozen


def test_dgm_refreshes_on_schedule_with_the_release_fraction(release_run):
    run = release_run
    dgm = run.method.gradient_masking
    # steps per epoch: 10, 10, 9, 9, 7, 7 (200/170/140 examples by 20); refresh at 0, 4, 8
    assert dgm.refreshes == 2 * (3 + 3 + 3 + 3 + 2 + 2)
    masks = run.method.sparsifier.masks
    for name, n in SIZES.items():
        assert int(masks.grad_masks[name].sum()) == round(0.2 * n)  # 20% of the layer (release)
        assert bool((masks.grad_masks[name] <= masks[name]).all())


@pytest.mark.parametrize("disabled", ["tdm", "ddr", "dgm"])
def test_each_component_switches_off_on_its_own(mnist_dir, tmp_path, disabled):
    extra = {
        "tdm": ["sparsity.update_rule=static"],
        "ddr": ["method.ddr.enabled=false"],
        "dgm": ["method.dgm.enabled=false"],
    }[disabled]
    run = fit(sparcl_overrides(mnist_dir, *extra), tmp_path / "run")
    method, sp = run.method, run.method.sparsifier
    nnz = [r["layer_nnz"] for r in method.density_history]
    sizes = [r["train_examples"] for r in method.density_history]
    assert (sp.rule.name == "tdm") == (disabled != "tdm")
    assert (all(n == BASE for n in nnz)) == (disabled == "tdm")
    assert (method.data_removal is None) == (disabled == "ddr")
    assert sizes == ([None] * 12 if disabled == "ddr" else [200, 200, 170, 170, 140, 140] * 2)
    assert (sp.gradient_policy is None and not sp.masks.grad_masks) == (disabled == "dgm")
    sp.check()


def test_sparcl_with_every_component_off_is_derpp_with_a_static_mask(mnist_dir, tmp_path):
    loss_as_derpp = ["method.restrict_current_ce=false", "method.replay_first_task=true"]
    off = ["sparsity.update_rule=static", "method.ddr.enabled=false", "method.dgm.enabled=false"]
    sparcl = fit(sparcl_overrides(mnist_dir, *loss_as_derpp, *off), tmp_path / "sparcl")
    as_derpp = [o for o in sparcl_overrides(mnist_dir) if not o.startswith(("method.ddr", "method.dgm"))]
    as_derpp = [o.replace("method=sparcl", "method=derpp") for o in as_derpp]
    derpp = fit([*as_derpp, "method.alpha=0.1", "method.beta=0.5", "sparsity.update_rule=static"], tmp_path / "derpp")
    assert type(derpp.method).__name__ == "DERPP"
    a, b = sparcl.method.model.state_dict(), derpp.method.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    loop = {type(c).__name__: c for c in sparcl.trainer.callbacks}["ContinualLoop"]
    loop_b = {type(c).__name__: c for c in derpp.trainer.callbacks}["ContinualLoop"]
    assert loop.acc == loop_b.acc
    # and the FLOPs reference is then just the samples both processed
    fa, fb = sparcl.method.sparsifier.flops, find_sparsifier(derpp.trainer).flops
    assert fa.samples_reference_only == 0 and fa.train_total == fb.train_total


def test_restricted_cross_entropy_sees_only_the_current_tasks_classes(release_run):
    seen = release_run.extra["current_ce_logits"]
    assert {t for t, _, _ in seen} == {0, 1}
    for t, logits, out in seen:
        own = list(release_run.datamodule.tasks[t].classes)
        others = [c for c in range(10) if c not in own]
        assert torch.equal(out[:, own], logits[:, own])
        # softmax over the task's classes only: zero probability, zero gradient elsewhere
        assert bool(torch.isneginf(out[:, others]).all())
    # (restrict_current_ce=false is the identity: see the DER++ equivalence test)


class _Crash(RuntimeError):
    pass


def test_checkpoint_resume_restores_every_piece_of_state_exactly(mnist_dir, tmp_path, monkeypatch):
    common = sparcl_overrides(mnist_dir, "logger=csv", "callbacks=default")
    full = run_summary(common, tmp_path / "full")

    original = SparCLMixin.on_train_epoch_start

    def crash_at_task1_epoch3(self):
        if self.current_epoch == 9:  # after the removal at epoch 2 and TDM's shrink of task 1
            raise _Crash("killed")
        return original(self)

    part = tmp_path / "part"
    with monkeypatch.context() as m:
        m.setattr(SparCLMixin, "on_train_epoch_start", crash_at_task1_epoch3)
        with pytest.raises(_Crash):
            train(compose_config(common, part))
    ckpt = torch.load(part / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 8
    saved = ckpt["method_state"]["sparcl"]
    assert saved["data_removal"]["done_epochs"] == [2] and len(saved["data_removal"]["removed"]) == 30
    assert int(saved["data_removal"]["presented"].sum()) > 0  # statistics since the last removal
    assert saved["gradient_masking"]["refreshes"] > 0
    sparsity_state = next(v for k, v in ckpt["callbacks"].items() if "SparsityCallback" in k)
    assert sparsity_state["masks"]["grad_masks"] and sparsity_state["rule"]["last_grads"]

    resumed = run_summary([*common, "ckpt_path=auto"], part)
    for key in ("cl", "flops", "sparcl"):
        a, b = dict(full[key]), dict(resumed[key])
        for volatile in ("eval_seconds", "fit_seconds", "train_seconds", "eval_share"):
            a.pop(volatile, None), b.pop(volatile, None)
        assert a == b, key
    assert resumed["sparsity"]["layer_nnz"] == full["sparsity"]["layer_nnz"]
    w_full = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    w_part = torch.load(part / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(w_full[k], w_part[k]) for k in w_full)


def test_sparcl_on_er(mnist_dir, tmp_path, monkeypatch):
    from sparseforge.methods.base import ContinualMethod

    ce_inputs: list[torch.Tensor] = []
    classification_loss = ContinualMethod.classification_loss  # cross-entropy without a loss group

    def recording_loss(self, logits, y):
        ce_inputs.append(logits.detach().clone())
        return classification_loss(self, logits, y)

    monkeypatch.setattr(ContinualMethod, "classification_loss", recording_loss)
    summary = run_summary(sparcl_overrides(mnist_dir, "method.base=er"), tmp_path / "run")
    assert summary["status"] == "completed"
    # ER's one cross-entropy: the current batch's rows restricted to its task's classes, the
    # replayed rows (task 1 on; the release does not replay in task 0) over every class.
    current_rows = []
    for x in ce_inputs:
        masked = torch.isneginf(x).any(dim=1)
        n = int(masked.sum())
        assert n > 0 and bool(masked[:n].all()) and bool(torch.isfinite(x[n:]).all())
        current_rows.append(n)
    assert set(current_rows) <= {20, 10}  # batch 20; DDR leaves 170 or 140 examples: a last batch of 10
    assert sum(len(x) > n for x, n in zip(ce_inputs, current_rows, strict=True)) > 0  # replay happened
    assert summary["sparcl"]["base"] == "er" and summary["sparcl"]["ddr"]["removed_total"] == 120
    assert 0 < summary["flops"]["train_relative_to_dense"] < 1


def test_sparcl_without_sparse_layers_is_one_config_error_before_any_work(mnist_dir, tmp_path):
    from sparseforge.errors import ConfigError

    dense = [o for o in sparcl_overrides(mnist_dir) if not o.startswith("sparsity")]
    with pytest.raises(ConfigError, match="sparsity: method=sparcl builds on the sparsity engine's masks"):
        build(compose_config([*dense, "sparsity=dense"], tmp_path / "run"))
