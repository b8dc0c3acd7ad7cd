"""SHARP under real DDP (2 CPU processes, gloo): the same unit ranks, masks, memories and weights
on every rank."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch

from tests.helpers.cl import assert_same_state
from tests.helpers.cli import run_cli
from tests.helpers.fake_data import write_mnist_like


class DumpSharpState(pl.Callback):
    """Writes each rank's SHARP state and weights at the end of training."""

    def on_train_end(self, trainer, pl_module):
        state = {"sharp": pl_module.learner.state_dict(), "weights": pl_module.model.state_dict()}
        torch.save(state, f"{trainer.default_root_dir}/sharp_rank{trainer.global_rank}.pt")


@pytest.mark.ddp
@pytest.mark.slow
def test_sharp_state_is_identical_on_every_rank(tmp_path, data_dir):
    write_mnist_like(data_dir, n_train=400, n_test=100)
    run_dir = tmp_path / "run"
    proc = run_cli(
        [
            "hardware=ddp_cpu", "dataset=mnist", f"dataset.root={data_dir}", "dataset.download=false",
            "model=sharp_mnistlike", "method=sharp", "sparsity=dense", "optimizer=adadelta", "logger=none",
            "data.batch_size=32", "scenario.n_tasks=5", "trainer.max_epochs=6", "scenario.epochs_per_task=2", "method.phase_epochs=1",
            "method.max_phases=2", "print_config=false", "trainer.enable_progress_bar=false",
            f"hydra.run.dir={run_dir}", "+callbacks.dump._target_=tests.e2e.test_sharp_ddp.DumpSharpState",
        ],
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(run_dir / f"sharp_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert_same_state(ranks[0], ranks[1], "state")
    assert ranks[0]["sharp"]["position"] == {"episode": 2, "phase": 2}
    assert ranks[0]["sharp"]["stm"]["labels"] == [4, 5]  # the last task's classes
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (
        summary["status"] == "completed"
        and summary["cl"]["completed_tasks"] == 3
        and not summary["cl"]["partial_last_task"]
    )
    # every replayed step drew on both ranks: the previous task's classes only
    assert {int(c) for c in summary["replay"]["replayed_per_episode"]["2"]} == {2, 3}
