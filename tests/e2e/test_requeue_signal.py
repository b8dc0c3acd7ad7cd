"""SLURM's time-limit warning (USR1) is answered at a safe point: after the step it interrupts.

No cluster is needed: the process runs with SLURM's job variables and a stand-in ``scontrol`` on
PATH that records the requeue. The real-cluster path (sbatch array, a real USR1, a real requeue)
is in test_slurm.py.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment

from sparseforge.train import train
from tests.helpers.cl import QUIET, Crash, one_thread
from tests.helpers.cli import REPO
from tests.helpers.config import compose_config
from tests.helpers.ddp import free_port
from tests.lightning.test_cl_resume import assert_same_run

SIGNAL_STEP = 13  # digits, batch 32: 9 steps per epoch, so step 13 is inside epoch 1


class SignalInsideAStep(pl.Callback):
    """Sends USR1 to this process as step ``SIGNAL_STEP`` starts, before its forward pass; then
    fails the run two steps later, as the SIGTERM that follows a requeue would."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == SIGNAL_STEP:
            os.kill(os.getpid(), signal.SIGUSR1)
        if trainer.global_step == SIGNAL_STEP + 2:
            raise Crash("killed after the requeue")


def recording_scontrol(tmp_path: Path) -> tuple[Path, Path]:
    """A folder holding an ``scontrol`` that appends its arguments to a file; both paths."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol_calls"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    return bin_dir, calls


@pytest.fixture
def slurm_job(tmp_path, monkeypatch) -> Path:
    """SLURM job variables and an ``scontrol`` that appends its arguments to a file."""
    bin_dir, calls = recording_scontrol(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for name, value in {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                        "SLURM_NODEID": "0", "SLURM_JOB_NAME": "sparseforge", "SLURM_NODELIST": "localhost"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(SLURMEnvironment, "detect", staticmethod(lambda: True))  # as if started by srun
    previous = signal.getsignal(signal.SIGUSR1)
    yield calls
    signal.signal(signal.SIGUSR1, previous)


def test_requeue_signal_checkpoints_after_the_interrupted_step_and_resumes_exactly(tmp_path, slurm_job):
    common = [*QUIET, "method=er", "method.buffer_size=100", "scenario.epochs_per_task=2", "model.dropout=0.2"]
    with one_thread():
        train(compose_config(common, output_dir=tmp_path / "reference"))
        signalled = [*common, "+callbacks.signal._target_=tests.e2e.test_requeue_signal.SignalInsideAStep"]
        with pytest.raises(Crash):
            train(compose_config(signalled, output_dir=tmp_path / "run"))
        assert slurm_job.read_text().split() == ["requeue", "4242"]  # Lightning's handler ran once
        # Both checkpoints hold the interrupted step completed, not a half-done one.
        last = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
        hpc = torch.load(tmp_path / "run/hpc_ckpt_1.ckpt", weights_only=True)
        assert last["global_step"] == hpc["global_step"] == SIGNAL_STEP + 1
        assert last["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"] is False
        assert all(torch.equal(last["state_dict"][k], hpc["state_dict"][k]) for k in last["state_dict"])
        train(compose_config([*common, "ckpt_path=auto"], output_dir=tmp_path / "run"))
    assert_same_run(tmp_path / "reference", tmp_path / "run")


class SignalEachRankAtItsOwnStep(pl.Callback):
    """USR1 reaches rank 1 as step 25 starts and rank 0 only two steps later, as a signal sent to
    every task of a job step can; both ranks fail at step 29, as the SIGTERM after a requeue would."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == DDP_SIGNAL_STEP + 2 * (1 - trainer.global_rank):
            os.kill(os.getpid(), signal.SIGUSR1)
        if trainer.global_step == DDP_SIGNAL_STEP + 4:
            raise Crash("killed after the requeue")


DDP_SIGNAL_STEP = 25  # 2 ranks x batch 32: 11 steps per epoch, so step 25 is inside epoch 2 (task 1)


def srun_two_ranks(args: list[str], run_dir: Path, scontrol_dir: Path) -> list[subprocess.CompletedProcess]:
    """``train.py`` as ``srun --ntasks=2 --ntasks-per-node=2`` starts it: one process per rank,
    told its rank by SLURM's variables (Lightning's SLURMEnvironment), not spawned by Lightning."""
    port = free_port()
    slurm = {"SLURM_JOB_ID": "4243", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NODEID": "0",
             "SLURM_JOB_NAME": "sparseforge", "SLURM_NODELIST": "localhost", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
             "PATH": f"{scontrol_dir}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(4)]  # files, not pipes: a full pipe blocks a rank
    ranks = [
        subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *args, "hardware=ddp_cpu", f"hydra.run.dir={run_dir}"],
            cwd=REPO,
            env={**os.environ, **slurm, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
            stdout=logs[2 * rank],
            stderr=logs[2 * rank + 1],
            text=True,
        )
        for rank in (0, 1)
    ]
    try:  # a deadlock between the ranks (as Lightning's own DDP requeue had here) fails, not hangs
        for p in ranks:
            p.wait(timeout=300)
    finally:
        for p in ranks:
            p.kill()
    texts = []
    for log in logs:
        log.seek(0)
        texts.append(log.read())
        log.close()
    return [
        subprocess.CompletedProcess(p.args, p.returncode, texts[2 * rank], texts[2 * rank + 1])
        for rank, p in enumerate(ranks)
    ]


@pytest.mark.ddp
@pytest.mark.slow
def test_requeue_signal_under_ddp_is_answered_by_every_rank_at_the_same_step(tmp_path):
    scontrol_dir, calls = recording_scontrol(tmp_path)
    common = [*QUIET, "method=derpp", "method.buffer_size=300", "scenario.n_tasks=2", "scenario.epochs_per_task=2",
              "model.dropout=0.2"]  # fmt: skip
    reference, run = tmp_path / "reference", tmp_path / "run"
    for proc in srun_two_ranks(common, reference, scontrol_dir):
        assert proc.returncode == 0, proc.stderr[-3000:]
    signalled = [*common, "+callbacks.signal._target_=tests.e2e.test_requeue_signal.SignalEachRankAtItsOwnStep"]
    for proc in srun_two_ranks(signalled, run, scontrol_dir):
        assert proc.returncode != 0 and "killed after the requeue" in proc.stderr, proc.stderr[-3000:]
    # Rank 0 requeued once, at the step where rank 1 got the signal; rank 0's own later signal
    # changed nothing. Both checkpoints hold that step completed.
    assert calls.read_text().split() == ["requeue", "4243"]
    last = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    hpc = torch.load(run / "hpc_ckpt_1.ckpt", weights_only=True)
    assert last["global_step"] == hpc["global_step"] == DDP_SIGNAL_STEP + 1
    assert last["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"] is False
    assert all(torch.equal(last["state_dict"][k], hpc["state_dict"][k]) for k in last["state_dict"])
    for proc in srun_two_ranks([*common, "ckpt_path=auto"], run, scontrol_dir):
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(reference, run)
