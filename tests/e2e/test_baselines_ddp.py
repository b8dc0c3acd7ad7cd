"""The baselines under real DDP (2 CPU processes, gloo): every rank ends with the same method state
(Fisher and anchors, path integrals, frozen previous model, exemplars, episodic memory, GDumb's
buffer and retrained weights, PackNet's masks and ownership) and the same weights."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.cl import QUIET, assert_same_state, summary
from tests.helpers.cli import run_cli

SETUPS = {
    "ewc_on": ["method=ewc_on", "optimizer.momentum=0"],
    "si": ["method=si", "optimizer.momentum=0"],
    "lwf": ["method=lwf"],
    "icarl": ["method=icarl", "method.buffer_size=100"],
    "agem": ["method=agem", "method.buffer_size=100", "method.minibatch_size=16"],
    "gdumb": ["method=gdumb", "method.buffer_size=100", "method.fitting_epochs=2"],
    "packnet": ["method=packnet", "scenario=task_il"],
}


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.parametrize("method", list(SETUPS))
def test_method_state_is_identical_on_every_rank(tmp_path, method):
    run_dir = tmp_path / "run"
    proc = run_cli(
        [
            *QUIET,
            "hardware=ddp_cpu",
            *SETUPS[method],
            "scenario.n_tasks=2",
            "scenario.epochs_per_task=2",
            "model.dropout=0.2",  # each rank draws its own dropout masks: only all-reduces keep them together
            f"hydra.run.dir={run_dir}",
            "+callbacks.dump._target_=tests.helpers.cl.method_state_dump",
        ],
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary(run_dir)["status"] == "completed"
    ranks = [torch.load(run_dir / f"method_state_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["method_state"], "the method saved no state"
    assert_same_state(ranks[0], ranks[1])
