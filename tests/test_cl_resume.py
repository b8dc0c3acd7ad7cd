"""Resume is exact: a run stopped or SIGKILLed anywhere and resumed with ckpt_path=auto ends with
the same accuracy matrix (and the same weights) as an uninterrupted run with the same seed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sparseforge.train import train
from tests.conftest import REPO
from tests.helpers.cl import QUIET, Crash, one_thread, summary
from tests.helpers.config import compose_config
from tests.helpers.fake_data import write_cifar


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


def checkpoint_epoch(path: Path) -> int | None:
    try:
        return int(torch.load(path, weights_only=True)["epoch"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


def kill_after_checkpoint(args: list[str], run_dir: Path, epoch: int, env: dict, timeout: float = 600) -> None:
    """Start the run, SIGKILL it as soon as the checkpoint of ``epoch`` appears, check where it landed."""
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt, last_mtime, deadline = run_dir / "checkpoints" / "last.ckpt", None, time.time() + timeout
    try:
        while time.time() < deadline:
            assert proc.poll() is None, (
                f"the run ended before epoch {epoch} was checkpointed:\n{proc.stderr.read()[-3000:]}"
            )
            mtime = ckpt.stat().st_mtime_ns if ckpt.exists() else None
            if mtime is not None and mtime != last_mtime:
                last_mtime = mtime
                if checkpoint_epoch(ckpt) == epoch:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.01)
        else:
            pytest.fail(f"no checkpoint of epoch {epoch} within {timeout} s")
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # The kill landed before the next epoch was checkpointed and before the run finished.
    assert checkpoint_epoch(ckpt) == epoch
    assert summary(run_dir)["status"] == "running"


@pytest.mark.slow
def test_sigkilled_run_resumes_exactly(tmp_path, data_dir):
    """Real SIGKILLs from outside: once inside a task, once at a task boundary (DER++ on RigL)."""
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
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cli(run_dir: Path, *extra: str) -> list[str]:
        return [sys.executable, str(REPO / "train.py"), *common, f"hydra.run.dir={run_dir}", *extra]

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    done = subprocess.run(cli(reference), cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    # Epochs 2k, 2k+1 belong to task k. After epoch 2 (task 1's first epoch) the run is inside task 1;
    # after epoch 5 (task 2's last) it is crossing the boundary into task 3.
    kill_after_checkpoint(cli(killed), killed, epoch=2, env=env)
    kill_after_checkpoint(cli(killed, "ckpt_path=auto"), killed, epoch=5, env=env)
    done = subprocess.run(cli(killed, "ckpt_path=auto"), cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert summary(killed)["resumed_from"].endswith("last.ckpt")
    assert_same_run(reference, killed)
