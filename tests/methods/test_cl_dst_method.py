"""CL-with-DST end to end through the real config: parameter isolation (frozen weights never move,
reused weights keep their values, no forgetting in task-IL), the kept checkpoint, the schedules
that restart per task, pre-flight errors, and exact resume after a SIGKILL inside a task."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from sparseforge.continual import metrics
from sparseforge.errors import ConfigError
from sparseforge.train import build, collect_summary, train
from tests.helpers.cl import QUIET, one_thread, summary
from tests.helpers.config import compose_config
from tests.helpers.fake_data import write_cifar

# Split Digits (5 tasks x 2 classes, 9 batches per epoch), MLP 64-100-100-10.
CL_DST = [
    *QUIET,
    "method=cl_dst",
    "scenario=task_il",
    "optimizer=adam",
    "optimizer.lr=0.01",
    "trainer.gradient_clip_val=null",
    "scenario.epochs_per_task=3",
    "method.update_frequency=4",
]


def fit(overrides, run_dir: Path, *callbacks: pl.Callback):
    """The run (with extra callbacks) and its summary sections, as summary.json would hold them."""
    with one_thread():
        run = build(compose_config([*CL_DST, *overrides], output_dir=run_dir))
        run.trainer.callbacks.extend(callbacks)
        run.trainer.fit(run.method, datamodule=run.datamodule)
    return run, collect_summary(run)


class IsolationSpy(pl.Callback):
    """Checks, after every optimizer step, that the weights earlier tasks own hold their merged
    values wherever the current mask reuses them and that everything outside the mask is zero;
    at each task's first step that the task started from the merged weights times its mask; and
    records every task's weights (merged x mask) as it is stored."""

    def __init__(self):
        self.stored: dict[int, dict[str, torch.Tensor]] = {}
        self.checked_steps = 0
        self.reused = 0

    def on_train_batch_start(self, trainer, method, batch, batch_idx):
        store, masks = method.store, method.masks
        if method.steps_in_task == 0 and store.merged:
            for name, layer in method.layers.items():
                assert torch.equal(layer.weight.detach(), store.merged[name] * masks[name]), name

    def on_train_batch_end(self, trainer, method, outputs, batch, batch_idx):
        store, masks = method.store, method.masks
        for name, layer in method.layers.items():
            w = layer.weight.detach()
            assert torch.count_nonzero(w[~masks[name]]) == 0, name
            if store.used:
                reused = masks[name] & store.used[name]
                assert torch.equal(w[reused], store.merged[name][reused]), name
                self.reused += int(reused.count_nonzero())
        self.checked_steps += 1

    def on_train_epoch_end(self, trainer, method):  # runs after the task loop's end_task
        for t in method.store.task_ids:
            if t not in self.stored:
                self.stored[t] = {n: method.store.merged[n] * m for n, m in method.store.masks[t].items()}


@pytest.mark.parametrize(
    "optimizer",
    [
        # momentum and weight decay carried across tasks: freezing must not rely on a fresh optimizer
        ["optimizer=adamw", "optimizer.weight_decay=0.1", "task_loop.reset_optimizer_per_task=false"],
        ["optimizer=sgd", "optimizer.lr=0.05", "optimizer.momentum=0.9", "optimizer.weight_decay=5e-3"],
    ],
    ids=["adamw_no_reset", "sgd_momentum"],
)
def test_frozen_weights_never_change_and_reused_weights_keep_their_values(tmp_path, optimizer):
    spy = IsolationSpy()
    run, _ = fit([*optimizer, "method.growth=momentum"], tmp_path / "run", spy)
    store = run.method.store
    assert store.task_ids == [0, 1, 2, 3, 4] and spy.checked_steps == 5 * 3 * 9
    assert spy.reused > 0  # later tasks did reuse earlier tasks' weights
    for t in range(1, 5):  # masks of different tasks overlap
        assert any((store.masks[t][n] & store.masks[t - 1][n]).any() for n in store.used)
    for t, weights in spy.stored.items():  # every task's weights are what they were when it ended
        for name, w in weights.items():
            assert torch.equal(store.merged[name] * store.masks[t][name], w), (t, name)


def test_the_merged_model_gives_every_task_exactly_its_accuracy_when_it_ended(tmp_path):
    """Parameter isolation: no forgetting in task-IL, exactly (and for the release's all-class
    argmax under the task's mask too)."""
    _, s = fit(["method.distribution=erk", "method.growth=gradient", "method.drop=taylor_fo"], tmp_path / "run")
    cl = s["cl"]
    R, R_all = cl["acc_matrix_task_il"], cl["acc_matrix"]
    for k in range(5):
        assert all(R[t][k] == R[k][k] for t in range(k, 5)), k
        assert all(R_all[t][k] == R_all[k][k] for t in range(k, 5)), k
    assert cl["bwt_task_il"] == cl["bwt"] == cl["forgetting_task_il"] == 0.0
    assert cl["avg_acc_task_il"] > 0.9  # it learned: Split Digits is easy in task-IL
    run, s = fit(["method.isolate=false"], tmp_path / "shared")
    assert run.method.store.task_ids == [0, 1, 2, 3, 4]
    R_shared = s["cl"]["acc_matrix_task_il"]
    assert metrics.backward_transfer(R_shared) < 0  # later tasks overwrite shared weights


@pytest.mark.parametrize("keep", ["best_train_acc", "final"])
def test_the_kept_state_is_the_best_epoch_or_the_last(tmp_path, keep):
    seen: dict[int, list] = {}

    class EpochEnds(pl.Callback):
        def on_train_batch_end(self, trainer, method, outputs, batch, batch_idx):
            if batch_idx == trainer.num_training_batches - 1:  # the epoch's state, before its end
                acc = float(method.epoch_train_accuracy())
                masks = {n: m.clone() for n, m in method.masks.masks.items()}
                weights = {n: layer.weight.detach().clone() for n, layer in method.layers.items()}
                seen.setdefault(method.current_task, []).append((trainer.current_epoch, acc, masks, weights))

    run, s = fit(
        [f"method.keep={keep}", "scenario.epochs_per_task=4", "optimizer.lr=0.05"], tmp_path / "run", EpochEnds()
    )
    store, log = run.method.store, s["cl_dst"]["updates"]
    for t, epochs in seen.items():
        accs = [acc for _, acc, _, _ in epochs]
        index = accs.index(max(accs)) if keep == "best_train_acc" else len(epochs) - 1  # strictly better wins
        epoch, _, masks, weights = epochs[index]
        assert log[t]["kept_epoch"] == (epoch if keep == "best_train_acc" else None)
        for n in masks:
            assert torch.equal(store.masks[t][n], masks[n])
            assert torch.equal(store.merged[n][masks[n]], weights[n][masks[n]])
    if keep == "best_train_acc":  # (seeded) tasks 0 and 3 keep an earlier epoch than their last
        assert any(entry["kept_epoch"] % 4 != 3 for entry in log)
    if keep == "best_train_acc":
        assert any(entry["kept_epoch"] % 4 != 3 for entry in log)  # some task kept an earlier epoch


def test_every_task_restarts_the_drop_rate_schedule_and_the_learning_rate(tmp_path):
    seen = []

    class Rates(pl.Callback):
        def on_train_batch_end(self, trainer, method, outputs, batch, batch_idx):
            rate = method.schedule.fraction_at(method.steps_in_task, method.horizon)
            seen.append((method.current_task, method.steps_in_task, rate, trainer.optimizers[0].param_groups[0]["lr"]))

    _, s = fit(
        ["lr_scheduler=multistep", "lr_scheduler.milestones=[1,2]", "optimizer.lr=0.01"], tmp_path / "run", Rates()
    )
    for t in range(5):
        task = [s for s in seen if s[0] == t]
        assert [s[1] for s in task] == list(range(1, 28))  # 3 epochs x 9 steps, counted per task
        assert task[0][2] == pytest.approx(0.005 + 0.495 / 2 * (1 + torch.cos(torch.tensor(torch.pi / 27)).item()))
        assert task[-1][2] == pytest.approx(0.005)  # the floor at the task's last step
        assert [s[3] for s in task[::9]] == pytest.approx([0.01, 0.001, 0.0001])  # MultiStep per task
    assert [e["updates"] for e in s["cl_dst"]["updates"]] == [6] * 5  # steps 4, 8, ..., 24: until the task ends


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["scenario=class_il"], "scenario"),
        (["optimizer=sgd", "optimizer.momentum=0.0", "method.growth=momentum"], "method.growth"),
        (["method.density=0.0001"], "method.density"),
        (["sparsity=rigl"], "sparsity"),
        (["method.drop_rate_floor=0.6"], "method.drop_rate_floor"),
    ],
)
def test_bad_settings_fail_before_any_work_naming_the_key(tmp_path, overrides, key):
    with pytest.raises(ConfigError) as err:
        cfg = compose_config([*CL_DST, *overrides], output_dir=tmp_path / "run")
        train(cfg)
    assert err.value.key == key
    assert not (tmp_path / "run").exists()


def test_summary_reports_capacity_and_flops(tmp_path):
    _, s = fit([], tmp_path / "run")
    sp, caps = s["sparsity"], s["sparsity"]["tasks"]
    assert sp["method"] == "cl_dst" and sp["density"] == pytest.approx(0.2, abs=1e-3)
    assert [c["task"] for c in caps] == [0, 1, 2, 3, 4]
    assert caps[0]["owned"] == pytest.approx(sp["density"], abs=1e-3) and caps[0]["reused"] == 0
    assert sp["capacity_used"] == pytest.approx(sum(c["owned"] for c in caps)) == caps[-1]["used_after"]
    assert all(c["reused"] > 0 for c in caps[1:])
    # sparse forward and input-gradient passes, weight gradients at the layer densities
    assert s["flops"]["train_relative_to_dense"] < 0.5
    assert s["cl_dst"]["evaluation"]["acc_matrix"].endswith("(the release's)")


@pytest.mark.slow
def test_sigkilled_run_resumes_exactly_inside_a_task(tmp_path, data_dir):
    """A real SIGKILL from outside, inside an epoch of task 1 (after DST updates and with frozen
    weights), then one at a task boundary: the resumed run ends bit-identical to an uninterrupted one."""
    from tests.lightning.test_cl_resume import kill_twice_and_resume

    write_cifar(data_dir, num_classes=10, n_train=1000, n_test=200)  # random crop + flip: the RNG matters
    common = [
        *QUIET,
        "dataset=cifar10",
        f"paths.data_dir={data_dir}",
        "dataset.verify_checksums=false",
        "model=resnet18_cldst",
        "model.width=4",
        "method=cl_dst",
        "scenario=task_il",
        "method.growth=random_unfired",
        "method.keep=best_train_acc",
        "method.update_frequency=4",
        "optimizer=adam",
        "data.batch_size=16",
        "scenario.n_tasks=5",
        "scenario.epochs_per_task=2",
        "seed=11",
        "callbacks.model_checkpoint.every_n_train_steps=5",
    ]
    # 13 batches per epoch (200 images per task); task 1 = epochs 2 and 3. Step 30 is batch 4 of
    # epoch 2, after task 1's first update; step 52 ends epoch 3, task 1's last.
    reference, killed = kill_twice_and_resume(tmp_path, common, inside=(30, 2), at_end_of=(52, 3))
    a, b = summary(reference), summary(killed)
    assert a["sparsity"]["tasks"] == b["sparsity"]["tasks"] and a["cl_dst"] == b["cl_dst"]
