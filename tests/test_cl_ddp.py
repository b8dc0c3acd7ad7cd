"""Replay under real DDP (2 CPU processes, gloo): one global stream, identical buffers on every rank."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import run_cli
from tests.helpers.cl import QUIET, summary


@pytest.mark.ddp
@pytest.mark.slow
def test_replay_buffer_is_identical_on_every_rank(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        [
            *QUIET,
            "hardware=ddp_cpu",
            "method=derpp",
            "method.buffer_size=300",
            "scenario.n_tasks=2",
            "scenario.epochs_per_task=1",
            f"hydra.run.dir={run_dir}",
            "+callbacks.dump._target_=tests.helpers.cl.buffer_dump",
        ],
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(run_dir / f"buffer_rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key in ("x", "y", "task", "logits", "valid", "generator"):
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    # Each rank inserted the batches of both ranks: the buffer saw the whole (padded) stream once.
    s = summary(run_dir)
    stream = 1347  # digits' training split, every example once over the 2 tasks
    assert ranks[0]["seen"] == s["replay"]["seen"] and stream <= ranks[0]["seen"] <= stream + 2
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert torch.equal(ckpt["method_state"]["buffer"]["x"], ranks[0]["x"])
