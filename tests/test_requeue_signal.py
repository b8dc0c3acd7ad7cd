"""SLURM's time-limit warning (USR1) is answered at a safe point: after the step it interrupts.

No cluster is needed: the process runs with SLURM's job variables and a stand-in ``scontrol`` on
PATH that records the requeue. The real-cluster path (sbatch array, a real USR1, a real requeue)
is in test_slurm.py.
"""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment

from sparseforge.train import train
from tests.helpers.cl import QUIET, Crash, one_thread
from tests.helpers.config import compose_config
from tests.test_cl_resume import assert_same_run

SIGNAL_STEP = 13  # digits, batch 32: 9 steps per epoch, so step 13 is inside epoch 1


class SignalInsideAStep(pl.Callback):
    """Sends USR1 to this process as step ``SIGNAL_STEP`` starts, before its forward pass; then
    fails the run two steps later, as the SIGTERM that follows a requeue would."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == SIGNAL_STEP:
            os.kill(os.getpid(), signal.SIGUSR1)
        if trainer.global_step == SIGNAL_STEP + 2:
            raise Crash("killed after the requeue")


@pytest.fixture
def slurm_job(tmp_path, monkeypatch) -> Path:
    """SLURM job variables and an ``scontrol`` that appends its arguments to a file."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol_calls"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
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
        signalled = [*common, "+callbacks.signal._target_=tests.test_requeue_signal.SignalInsideAStep"]
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
