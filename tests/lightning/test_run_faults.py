"""Faults a run meets on a preemptible cluster, in-process through the real config and train():
each ends with one clear line, the right status in summary.json, nothing lost and no debris.

The same faults from the command line, with real signals, real kills and a real small
filesystem, are in tests/e2e/test_fault_injection.py.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from sparseforge.errors import SparseforgeError
from sparseforge.train import train
from tests.helpers.cl import Crash, one_thread, summary
from tests.helpers.config import compose_config
from tests.helpers.fake_data import write_mnist_like
from tests.lightning.test_cl_resume import MID_EPOCH, comparable, weights
from tests.methods.test_sparcl_method import sparcl_overrides

# The default run (digits, MLP, ER + RigL) with one epoch per task: 5 epochs of 9 steps.
FAST = ["logger=csv", "scenario.epochs_per_task=1", "print_config=false", "trainer.enable_progress_bar=false"]
CRASH_AT_EPOCH = "+callbacks.crash._target_=tests.helpers.cl.crash_at_epoch"


def run(overrides, run_dir: Path) -> dict:
    with one_thread():
        return train(compose_config(overrides, output_dir=run_dir))


def csv_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def set_status(run_dir: Path, status: str) -> None:
    path = run_dir / "summary.json"
    data = json.loads(path.read_text())
    data["status"] = status
    path.write_text(json.dumps(data))


# -- a run killed after fit ended, before summary.json said completed -------------------------------
KILLED_AFTER_FIT = {
    "default_er_rigl": lambda d: FAST,
    "dense_finetune": lambda d: [*FAST, "sparsity=dense", "method=finetune"],
    "sparcl": lambda d: sparcl_overrides(d, "callbacks=default", "logger=csv"),
    "sharp": lambda d: MID_EPOCH["sharp"][0](d),
    "nm_sdgf": lambda d: MID_EPOCH["nm_sdgf"][0](d),
}


@pytest.mark.parametrize("name", list(KILLED_AFTER_FIT))
def test_a_run_killed_after_fit_ended_is_finished_by_a_rerun_with_the_same_numbers(tmp_path, data_dir, name):
    """last.ckpt already holds the final epoch, so the rerun trains nothing: summary.json must come
    from the checkpoint (FLOPs, training loss and accuracy included), say completed, and hold the
    numbers of the uninterrupted run."""
    write_mnist_like(data_dir, n_train=400, n_test=100)
    overrides = KILLED_AFTER_FIT[name](data_dir)
    run_dir = tmp_path / "run"
    first = run(overrides, run_dir)
    uninterrupted = comparable(run_dir)
    set_status(run_dir, "running")  # as if killed between the last checkpoint and the summary
    again = run([*overrides, "ckpt_path=auto"], run_dir)
    assert summary(run_dir)["status"] == "completed"
    assert again == first
    assert comparable(run_dir) == uninterrupted


# -- signals ---------------------------------------------------------------------------------------
class SignalAtStep(Callback):
    """Sends this process a signal after optimizer step ``step``, as a scheduler or Ctrl-C would."""

    def __init__(self, step: int, signum: str):
        self.step, self.signum = step, getattr(signal, signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_gives_a_nonzero_exit_and_an_interrupted_run_that_resumes_exactly(tmp_path, signum, code):
    straight = run(FAST, tmp_path / "straight")
    part = tmp_path / "part"
    sig = [
        f"+callbacks.sig._target_={__name__}.SignalAtStep",
        "+callbacks.sig.step=20",
        f"+callbacks.sig.signum={signum}",
    ]
    previous = signal.getsignal(signal.SIGINT)
    # Ctrl-C as an interactive shell delivers it: a shell starts background jobs with SIGINT
    # ignored, and pytest may run as one.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(SystemExit) as stopped:
            run([*FAST, *sig], part)
    finally:
        signal.signal(signal.SIGINT, previous)  # Lightning ignores further Ctrl-C after the first
    assert stopped.value.code == code  # 128 + the signal: what shells and SLURM read as "killed by it"
    assert summary(part)["status"] == "interrupted"
    resumed = run([*FAST, "ckpt_path=auto"], part)
    assert resumed == straight and summary(part)["status"] == "completed"
    assert csv_rows(part) == csv_rows(tmp_path / "straight")


# -- NaN and divergence ------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", ["rigl", "dense"])
def test_a_diverging_run_stops_at_the_first_nonfinite_loss_with_one_line(tmp_path, sparsity):
    run_dir = tmp_path / "run"
    with pytest.raises(SparseforgeError) as diverged:
        run([*FAST, f"sparsity={sparsity}", "optimizer.lr=1e6"], run_dir)
    line = str(diverged.value)
    assert "\n" not in line
    assert "loss is nan" in line.lower() or "loss is inf" in line.lower(), line
    assert "step" in line and "lr" in line and "1e+06" in line and "nonfinite_loss=allow" in line, line
    saved = summary(run_dir)
    assert saved["status"] == "failed" and line in saved["error"]
    step = int(line.split("step ")[1].split()[0].rstrip(",;:"))
    assert step < 9  # stopped in the first epoch, not 25 epochs of nan later
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()  # no checkpoint holds the nan weights


def test_nonfinite_loss_allow_keeps_training_and_records_where_it_diverged(tmp_path):
    run_dir = tmp_path / "run"
    run([*FAST, "sparsity=dense", "optimizer.lr=1e6", "nonfinite_loss=allow"], run_dir)
    saved = summary(run_dir)
    assert saved["status"] == "completed"
    record = saved["nonfinite_loss"]
    assert record["policy"] == "allow" and 0 <= record["first_step"] < 9 and record["steps"] > 9


def test_with_sparsity_allowed_nan_weights_fail_the_mask_check_with_the_reason(tmp_path):
    """NaN times a zero mask is NaN: pruned weights can no longer be zero, and the run says why."""
    from sparseforge.sparsity.masks import MaskInvariantError

    with pytest.raises(MaskInvariantError, match="NaN or infinite: the weights diverged"):
        run([*FAST, "optimizer.lr=1e6", "nonfinite_loss=allow"], tmp_path / "run")


# -- disk full ---------------------------------------------------------------------------------------
FULL_DISK = {"on": False}


class FullDiskFromEpoch(Callback):
    """From epoch ``epoch`` on, checkpoint files no longer fit on the disk."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        FULL_DISK["on"] = FULL_DISK["on"] or trainer.current_epoch == self.epoch


class _FillsUp:
    """A file that takes 100 bytes and then fails as a full disk does."""

    def __init__(self, file):
        self.file, self.written = file, 0

    def write(self, data) -> int:
        if self.written + len(data) > 100:
            raise OSError(28, "No space left on device")
        self.written += len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_a_full_disk_gives_one_line_a_failed_summary_and_no_temporary_files(tmp_path, monkeypatch):
    from sparseforge.utils import io

    original = io.open_temp_file

    def open_on_a_full_disk(path):
        file = original(path)
        return _FillsUp(file) if FULL_DISK["on"] and ".ckpt" in str(path) else file

    monkeypatch.setattr(io, "open_temp_file", open_on_a_full_disk)
    monkeypatch.setitem(FULL_DISK, "on", False)
    run_dir = tmp_path / "run"
    fill = [f"+callbacks.fill._target_={__name__}.FullDiskFromEpoch", "+callbacks.fill.epoch=2"]
    with pytest.raises(SparseforgeError) as full:
        run([*FAST, *fill], run_dir)
    line = str(full.value)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert line == f"No space left on device writing {last}"
    saved = summary(run_dir)
    assert saved["status"] == "failed" and line in saved["error"]
    assert [p.name for p in run_dir.rglob("*") if ".tmp-" in p.name] == []
    assert torch.load(last, weights_only=False)["epoch"] == 1  # the last checkpoint that fitted


# -- corrupt or truncated checkpoints ------------------------------------------------------------------
def crash_at(epoch: int) -> list[str]:
    return [CRASH_AT_EPOCH, f"+callbacks.crash.epoch={epoch}"]


def test_a_truncated_last_checkpoint_falls_back_to_the_backup_and_still_ends_exact(tmp_path, caplog):
    straight = run(FAST, tmp_path / "straight")
    part = tmp_path / "part"
    with pytest.raises(Crash):
        run([*FAST, *crash_at(3)], part)
    last = part / "checkpoints" / "last.ckpt"
    backup = part / "checkpoints" / "last.ckpt.bak"
    assert torch.load(backup, weights_only=False)["epoch"] == 1  # the checkpoint before last.ckpt
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    resumed = run([*FAST, "ckpt_path=auto"], part)
    warning = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warning) == 1 and str(last) in warning[0] and str(backup) in warning[0]
    assert resumed == straight and summary(part)["resumed_from"] == str(backup)
    assert weights(part).keys() == weights(tmp_path / "straight").keys()
    assert all(torch.equal(weights(part)[k], v) for k, v in weights(tmp_path / "straight").items())
    assert csv_rows(part) == csv_rows(tmp_path / "straight")


@pytest.mark.parametrize("damage", ["truncated", "empty", "random"])
def test_an_unreadable_checkpoint_without_a_good_backup_is_one_line_with_the_way_out(tmp_path, damage):
    part = tmp_path / "part"
    with pytest.raises(Crash):
        run([*FAST, *crash_at(1)], part)  # one checkpoint only: no backup yet
    last = part / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes({"truncated": data[:-10], "empty": b"", "random": os.urandom(len(data))}[damage])
    with pytest.raises(SparseforgeError) as unreadable:
        run([*FAST, "ckpt_path=auto"], part)
    line = str(unreadable.value)
    assert line.startswith(f"checkpoint {last} is unreadable (truncated or corrupt): ") and "\n" not in line
    assert "ckpt_path=null" in line and "mmap" not in line
    assert summary(part)["status"] == "failed"  # the crashed run's summary, untouched


# -- leftovers ---------------------------------------------------------------------------------------
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_files_of_dead_processes_are_removed_at_start(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    pid = dead_pid()
    stale = [
        run_dir / "checkpoints" / f"last.ckpt.tmp-{pid}",  # the name older versions used
        run_dir / "checkpoints" / f".last.ckpt.tmp-{pid}",
        run_dir / f".summary.json.tmp-{pid}",
    ]
    alive = run_dir / "checkpoints" / f".last.ckpt.tmp-{os.getppid()}"  # a live process: not ours to remove
    for path in [*stale, alive]:
        path.write_bytes(b"half a checkpoint")
    run(FAST, run_dir)
    assert [p for p in stale if p.exists()] == []
    assert alive.exists()


def test_checkpoints_are_written_next_to_their_target_not_through_the_system_temp_dir(tmp_path, monkeypatch):
    used = []
    original = tempfile.mkstemp

    def recording_mkstemp(*args, **kwargs):
        used.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", recording_mkstemp)
    run(FAST, tmp_path / "run")
    assert used == []


# -- the CSV log across a resume -----------------------------------------------------------------------
def test_the_csv_log_of_a_resumed_run_has_the_rows_of_an_uninterrupted_one(tmp_path):
    run(FAST, tmp_path / "straight")
    part = tmp_path / "part"
    with pytest.raises(Crash):
        run([*FAST, *crash_at(3)], part)
    run([*FAST, "ckpt_path=auto"], part)
    assert csv_rows(part) == csv_rows(tmp_path / "straight")


# -- two processes, one run directory ------------------------------------------------------------------
HOLD = "import sys, time; from sparseforge.utils.run_lock import RunLock; RunLock.acquire(sys.argv[1]); print('held', flush=True); time.sleep(600)"


def test_a_run_directory_held_by_a_live_process_is_refused_and_freed_when_it_dies(tmp_path):
    import socket

    from sparseforge.errors import RunInUseError

    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInUseError) as refused:
            run(FAST, run_dir)
        assert f"is in use by PID {holder.pid} on {socket.gethostname()}" in str(refused.value)
        assert not (run_dir / "summary.json").exists()  # nothing of the other run was touched
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with the process
        holder.wait()
    run(FAST, run_dir)
    assert summary(run_dir)["status"] == "completed"


@pytest.mark.parametrize(
    "env, zero",
    [
        ({}, True),
        ({"LOCAL_RANK": "1"}, False),  # a process Lightning started for rank 1
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),
        ({"SLURM_PROCID": "1"}, False),  # srun, one task per rank
        ({"SLURM_PROCID": "0", "LOCAL_RANK": "1"}, False),  # Lightning's ranks inside one SLURM task
        ({"RANK": "0", "SLURM_PROCID": "3"}, True),  # torchrun's global rank wins
    ],
)
def test_only_the_process_that_becomes_rank_zero_owns_the_run_directory(monkeypatch, env, zero):
    from sparseforge.utils.run_lock import launched_as_rank_zero

    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert launched_as_rank_zero() is zero
