"""Resume is exact: a run stopped or SIGKILLed anywhere and resumed with ckpt_path=auto ends with
the same accuracy matrix (and the same weights) as an uninterrupted run with the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from sparseforge.train import build, train
from tests.helpers.cl import QUIET, Crash, one_thread, summary
from tests.helpers.cli import REPO
from tests.helpers.config import compose_config
from tests.helpers.fake_data import write_cifar, write_mnist_like
from tests.methods.test_sparcl_method import sparcl_overrides


def weights(run_dir: Path) -> dict:
    return torch.load(Path(run_dir) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def assert_same_run(a: Path, b: Path) -> None:
    sa, sb = summary(a), summary(b)
    assert sa["status"] == sb["status"] == "completed"
    assert sb["cl"]["acc_matrix"] == sa["cl"]["acc_matrix"]  # exact, not approx
    assert sb["cl"]["acc_matrix_task_il"] == sa["cl"]["acc_matrix_task_il"]
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    "setup, crash_at",
    [
        (["method=derpp", "method.buffer_size=200"], 4),  # inside task 1 (epochs 3, 4, 5)
        (["method=er", "method.buffer_policy=class_balanced", "method.buffer_size=150"], 6),  # at a task boundary
        (["method=joint"], 5),
        # at the start of task 1's retraining epoch: the pruning there runs in the resumed process
        (["method=packnet", "scenario=task_il"], 5),
        # at task 2's start: GDumb's retraining of task 1 and the buffer come back with the checkpoint
        (["method=gdumb", "method.buffer_size=100", "method.fitting_epochs=3"], 6),
        # the default sparse run: masks and the RigL schedule must come back too
        (["method=derpp", "method.buffer_size=200", "sparsity=rigl", "sparsity.delta_t=3"], 7),
    ],
)
def test_crashed_and_resumed_run_is_exact(tmp_path, setup, crash_at):
    # dropout and a momentum optimizer make every RNG state and the optimizer state matter
    common = [*QUIET, *setup, "scenario.epochs_per_task=3", "model.dropout=0.2", "seed=5"]
    crash = ["+callbacks.crash._target_=tests.helpers.cl.crash_at_epoch", f"+callbacks.crash.epoch={crash_at}"]
    with one_thread():
        train(compose_config(common, output_dir=tmp_path / "full"))
        with pytest.raises(Crash):
            train(compose_config([*common, *crash], output_dir=tmp_path / "part"))
        assert summary(tmp_path / "part")["status"] == "failed"
        assert torch.load(tmp_path / "part/checkpoints/last.ckpt", weights_only=True)["epoch"] == crash_at - 1
        train(compose_config([*common, "ckpt_path=auto"], output_dir=tmp_path / "part"))
    assert summary(tmp_path / "part")["resumed_from"].endswith("last.ckpt")
    assert_same_run(tmp_path / "full", tmp_path / "part")


# Checkpoints inside an epoch (every_n_train_steps): the resume continues at the next batch.
# Each setup crashes right after the step checkpoint of ``step``, inside an epoch, where the
# epoch's start (a task's begin_task, a fresh optimizer, a SparCL removal or TDM update, a SHARP
# phase) already ran before the save and must not run again.
MID_EPOCH = {
    # digits: 9 batches per epoch, task 1 = epochs 3-5; step 32 is batch 5 of task 1's first epoch
    "derpp_rigl": (lambda d: [*QUIET, "method=derpp", "method.buffer_size=200", "sparsity=rigl",
                              "sparsity.delta_t=3", "scenario.epochs_per_task=3", "model.dropout=0.2", "seed=5"], 32),
    "er_class_balanced": (lambda d: [*QUIET, "method=er", "method.buffer_policy=class_balanced",
                                     "method.buffer_size=150", "scenario.epochs_per_task=3", "seed=5"], 4),
    # step 32 is inside task 1, where ER-ACE masks the classes it has seen: they must come back
    "er_ace": (lambda d: [*QUIET, "method=er_ace", "method.buffer_size=150", "scenario.epochs_per_task=3",
                          "model.dropout=0.2", "seed=5"], 32),
    # 2 tasks x 6 epochs, 10 batches each until the removal at epoch 2; step 76 is inside task 1's
    # first epoch, after TDM's shrink, DDR's first removal of task 0 and several DGM refreshes
    "sparcl": (lambda d: sparcl_overrides(d, "callbacks=default"), 76),
    # CL-with-DST, task 1 = epochs 3-5: step 32 is after task 1's first topology update (its step 4),
    # with task 0's weights frozen, the best epoch of task 0 kept and Adam's moments feeding growth
    "cl_dst": (lambda d: [*QUIET, "method=cl_dst", "scenario=task_il", "optimizer=adam", "method.growth=momentum",
                          "method.keep=best_train_acc", "method.update_frequency=4", "scenario.epochs_per_task=3",
                          "model.dropout=0.2", "seed=5"], 32),
    # 5 tasks x 2 epochs of 3 batches, two phases per task; step 10 is inside task 1's 2nd phase
    "sharp": (lambda d: ["dataset=mnist", "dataset.download=false", "model=sharp_mnistlike", "method=sharp",
                         "sparsity=dense", "optimizer=adadelta", "logger=none", "data.batch_size=32",
                         "scenario.n_tasks=5", "scenario.epochs_per_task=2", "method.phase_epochs=1",
                         "method.max_phases=2", "trainer.max_epochs=4", "print_config=false",
                         "trainer.enable_progress_bar=false", f"paths.data_dir={d}"], 10),
    # The baselines: 5 tasks x 3 epochs of 9 batches (task 1 = epochs 3-5, steps 28-54); step 32
    # is batch 5 of task 1's first epoch, where each method already holds the state of task 0:
    # the Fisher and anchor (EWC), the importance and a running path integral (SI), the frozen
    # previous model (LwF, iCaRL), herded exemplars (iCaRL), the episodic memory (A-GEM), the
    # buffer of stream batches (GDumb's steps are empty but counted).
    **{
        name: (lambda d, extra=extra: [*QUIET, *extra, "scenario.epochs_per_task=3", "model.dropout=0.2", "seed=5"], 32)
        for name, extra in {
            "ewc_on": ["method=ewc_on", "optimizer.momentum=0", "optimizer.lr=0.03"],
            "si": ["method=si", "optimizer.momentum=0"],
            "lwf": ["method=lwf"],
            "icarl": ["method=icarl", "method.buffer_size=100"],
            "agem": ["method=agem", "method.buffer_size=100", "method.minibatch_size=32"],
            "gdumb": ["method=gdumb", "method.buffer_size=100", "method.fitting_epochs=3"],
        }.items()
    },
    # task-IL; each task's third epoch retrains after the pruning at its start: step 48 is batch 3
    # of task 1's retraining epoch, after its pruning (which must not run again on resume)
    "packnet": (lambda d: [*QUIET, "method=packnet", "scenario=task_il", "scenario.epochs_per_task=3",
                           "model.dropout=0.2", "seed=5"], 48),
    # Permuted MNIST, 3 tasks of 8 batches; step 12 is inside task 1: the per-task permutations,
    # the buffer's task ids (each replayed example's view) and the confusion matrices must come back
    "domain_il": (lambda d: ["+experiment=perm_mnist", *QUIET, f"paths.data_dir={d}", "dataset.download=false",
                             "scenario.n_tasks=3", "data.batch_size=50", "method=derpp", "method.buffer_size=100",
                             "model.dropout=0.2", "optimizer.lr=0.05", "optimizer.momentum=0.9", "seed=5"], 12),
    # task-free (digits, 5 hidden tasks of 9 batches); step 12 is inside the second hidden task, where
    # online ER-ACE already replays and masks, with the one optimizer that lives across the boundary
    "online": (lambda d: [*QUIET, "scenario.online=true", "scenario.epochs_per_task=1", "method=er_ace",
                          "method.buffer_size=150", "model.dropout=0.2", "seed=5"], 12),
    # iid, 4 epochs of 8 batches: SdGf's structure stages change inside epochs
    "nm_sdgf": (lambda d: [*QUIET[1:], "dataset=mnist", f"paths.data_dir={d}", "model=mlp",
                           "model.hidden_sizes=[64,32]", "scenario=iid", "method=finetune",
                           "scenario.epochs_per_task=4", "data.batch_size=50", "optimizer=adam",
                           "optimizer.lr=0.01", "sparsity=nm", "sparsity.n=1", "sparsity.m=8",
                           "sparsity.include=[features.1,features.3]", "sparsity.mode=sdgf",
                           "sparsity.dense_fraction=0.125"], 12),
}  # fmt: skip


def comparable(run_dir: Path) -> dict:
    """summary.json without what legitimately differs between two processes (timings, paths, and
    the memory the process's caches hold: a rerun that trains nothing builds fewer of them)."""
    s = summary(run_dir)
    runtime = {"eval_share", "mask_cache_bytes"}
    for key in ("cl", "flops", "sparcl", "sparsity", "replay", "metrics", "cl_dst"):
        if isinstance(s.get(key), dict):
            s[key] = {k: v for k, v in s[key].items() if "seconds" not in k and k not in runtime}
    return {k: s.get(k) for k in ("cl", "flops", "sparcl", "sparsity", "replay", "metrics", "cl_dst")}


@pytest.mark.parametrize("name", list(MID_EPOCH))
def test_resume_from_inside_an_epoch_is_exact(tmp_path, data_dir, name):
    make, step = MID_EPOCH[name]
    write_mnist_like(data_dir, n_train=400, n_test=100)
    common = [*make(data_dir), "callbacks.model_checkpoint.every_n_train_steps=2"]
    crash = ["+callbacks.crash._target_=tests.helpers.cl.crash_at_step", f"+callbacks.crash.step={step}"]
    with one_thread():
        train(compose_config(common, output_dir=tmp_path / "full"))
        with pytest.raises(Crash):
            train(compose_config([*common, *crash], output_dir=tmp_path / "part"))
        saved = torch.load(tmp_path / "part/checkpoints/last.ckpt", weights_only=False)
        assert saved["global_step"] == step
        loop = saved["loops"]["fit_loop"]
        served = loop["state_dict"]["combined_loader"][0]["batches_served"]
        assert served == loop["epoch_loop.batch_progress"]["current"]["ready"] > 0  # inside an epoch
        assert loop["epoch_loop.batch_progress"]["is_last_batch"] is False
        train(compose_config([*common, "ckpt_path=auto"], output_dir=tmp_path / "part"))
    assert summary(tmp_path / "part")["status"] == "completed"
    assert comparable(tmp_path / "part") == comparable(tmp_path / "full")
    wa, wb = weights(tmp_path / "full"), weights(tmp_path / "part")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    "crash",
    [
        ["+callbacks.crash._target_=tests.helpers.cl.crash_at_step", "+callbacks.crash.step=32"],
        ["+callbacks.crash._target_=tests.helpers.cl.crash_at_epoch", "+callbacks.crash.epoch=3"],
    ],
    ids=["inside_epoch_3", "at_epoch_3s_start"],
)
def test_training_accuracy_after_a_resume_is_that_of_the_uninterrupted_run(tmp_path, crash):
    """train/acc of the epoch a resume lands in covers that whole epoch and nothing more."""
    common = [*MID_EPOCH["derpp_rigl"][0](None), "callbacks.model_checkpoint.every_n_train_steps=2"]

    def record(name):
        log = tmp_path / f"{name}.jsonl"
        return log, ["+callbacks.acc._target_=tests.helpers.cl.record_train_accuracy", f"+callbacks.acc.path={log}"]

    full_log, full_rec = record("full")
    part_log, part_rec = record("part")
    with one_thread():
        train(compose_config([*common, *full_rec], output_dir=tmp_path / "full"))
        with pytest.raises(Crash):
            train(compose_config([*common, *crash], output_dir=tmp_path / "part"))
        train(compose_config([*common, *part_rec, "ckpt_path=auto"], output_dir=tmp_path / "part"))
    full = dict(tuple(json.loads(line)) for line in full_log.read_text().splitlines())
    part = dict(tuple(json.loads(line)) for line in part_log.read_text().splitlines())
    assert min(part) == 3  # the first epoch the resumed run finishes (step 32 is inside epoch 3)
    assert part == {epoch: acc for epoch, acc in full.items() if epoch >= 3}


@pytest.mark.parametrize(
    "trigger",
    [
        ["callbacks.model_checkpoint.every_n_train_steps=3"],
        # a zero interval is due after every step: the time trigger goes through the same path
        ["+callbacks.model_checkpoint.train_time_interval._target_=datetime.timedelta",
         "+callbacks.model_checkpoint.train_time_interval.seconds=0"],
    ],
    ids=["every_n_train_steps", "train_time_interval"],
)  # fmt: skip
def test_step_checkpoints_skip_an_epochs_last_batch(tmp_path, trigger):
    """A step save there would look like a finished epoch whose end (the task loop's evaluation)
    never ran; the end-of-epoch save covers it. Digits: 9 batches per epoch."""
    saved_at = []

    class Spy(pl.Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            loop = next(c for c in trainer.callbacks if type(c).__name__ == "ContinualLoop")
            saved_at.append((trainer.global_step, loop.completed_tasks))

    overrides = [*QUIET, "method=finetune", "scenario.epochs_per_task=1", "trainer.max_epochs=2", *trigger]
    with one_thread():
        run = build(compose_config(overrides, output_dir=tmp_path / "run"))
        run.trainer.callbacks.insert(0, Spy())
        run.trainer.fit(run.method, datamodule=run.datamodule)
    # Every save at step 9 or 18 comes after the task's end (evaluation done, task counted).
    steps = [3, 6, 9, 12, 15, 18] if "every_n_train_steps" in trigger[0] else list(range(1, 19))
    assert saved_at == [(step, 0 if step < 9 else 1 if step < 18 else 2) for step in steps]


def checkpoint_position(path: Path) -> tuple[int, int, bool] | None:
    """(global step, epoch, whether it was saved inside the epoch) of a checkpoint file."""
    try:
        ckpt = torch.load(path, weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError):
        return None
    inside = not ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"]
    return int(ckpt["global_step"]), int(ckpt["epoch"]), inside


def kill_after_checkpoint(args: list[str], run_dir: Path, step: int, env: dict, timeout: float = 600) -> None:
    """Start the run, SIGKILL it as soon as the checkpoint of ``step`` appears, check where it landed."""
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt, last_mtime, deadline = run_dir / "checkpoints" / "last.ckpt", None, time.time() + timeout
    try:
        while time.time() < deadline:
            assert proc.poll() is None, (
                f"the run ended before step {step} was checkpointed:\n{proc.stderr.read()[-3000:]}"
            )
            mtime = ckpt.stat().st_mtime_ns if ckpt.exists() else None
            if mtime is not None and mtime != last_mtime:
                last_mtime = mtime
                position = checkpoint_position(ckpt)
                if position is not None and position[0] == step:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.01)
        else:
            pytest.fail(f"no checkpoint of step {step} within {timeout} s")
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # The kill landed before the next checkpoint and before the run finished.
    assert checkpoint_position(ckpt)[0] == step
    assert summary(run_dir)["status"] == "running"


@pytest.mark.slow
def test_sigkilled_run_resumes_exactly(tmp_path, data_dir):
    """Real SIGKILLs from outside: inside an epoch of a task, then at a task boundary (DER++ on RigL)."""
    write_cifar(data_dir, n_train=2000, n_test=200)  # CIFAR: random crop + flip use the global RNG
    common = [
        *QUIET,
        "dataset=cifar10",
        f"paths.data_dir={data_dir}",
        "dataset.verify_checksums=false",
        "model=small_cnn",
        "model.channels=[16,32,32]",
        "method=derpp",
        "method.buffer_size=100",
        "data.batch_size=16",
        "scenario.n_tasks=5",
        "scenario.epochs_per_task=2",
        "seed=11",
        "sparsity=rigl",
        "sparsity.delta_t=5",  # masks and the RigL schedule are part of the state
        "callbacks.model_checkpoint.every_n_train_steps=10",
    ]
    # 25 batches per epoch; epochs 2k, 2k+1 belong to task k. Step 60 is batch 10 of epoch 2, inside
    # task 1; step 150 ends epoch 5, task 2's last: the resume crosses the boundary into task 3.
    kill_twice_and_resume(tmp_path, common, inside=(60, 2), at_end_of=(150, 5))


def kill_twice_and_resume(tmp_path: Path, common: list[str], inside: tuple[int, int], at_end_of: tuple[int, int]):
    """Train ``common`` once uninterrupted; then SIGKILL a paced run right after the checkpoint of
    step ``inside[0]`` (inside epoch ``inside[1]``), resume it and SIGKILL it after the checkpoint
    ending epoch ``at_end_of[1]`` (step ``at_end_of[0]``), resume it to the end: both runs must end
    identical. Returns (reference, killed) run directories."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pace = ["+callbacks.pace._target_=tests.helpers.pacing.StepPace", "+callbacks.pace.seconds=0.05"]

    def cli(run_dir: Path, *extra: str) -> list[str]:
        return [sys.executable, str(REPO / "train.py"), *common, f"hydra.run.dir={run_dir}", *extra]

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    done = subprocess.run(cli(reference), cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    kill_after_checkpoint(cli(killed, *pace), killed, step=inside[0], env=env)
    assert checkpoint_position(killed / "checkpoints" / "last.ckpt") == (*inside, True)
    kill_after_checkpoint(cli(killed, *pace, "ckpt_path=auto"), killed, step=at_end_of[0], env=env)
    assert checkpoint_position(killed / "checkpoints" / "last.ckpt") == (*at_end_of, False)
    done = subprocess.run(cli(killed, "ckpt_path=auto"), cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert summary(killed)["resumed_from"].endswith("last.ckpt")
    assert_same_run(reference, killed)
    return reference, killed
