"""Best-validation selection under real DDP (2 CPU processes, gloo): every rank holds out the same
examples, measures the same validation accuracies and keeps the same best weights."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.cl import QUIET, summary
from tests.helpers.cli import run_cli


@pytest.mark.ddp
@pytest.mark.slow
def test_every_rank_selects_the_same_best_epoch_and_weights(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        [
            *QUIET,
            "hardware=ddp_cpu",
            "scenario=iid",
            "scenario.epochs_per_task=3",
            "data.val_fraction=0.2",
            f"hydra.run.dir={run_dir}",
            "+callbacks.dump._target_=tests.helpers.cl.best_validation_dump",
        ],
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(run_dir / f"best_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert torch.equal(ranks[0]["val_index"], ranks[1]["val_index"]) and len(ranks[0]["val_index"]) > 0
    for key in ("val_acc", "best_acc", "best_epoch", "test_acc_at_best"):
        assert ranks[0][key] == ranks[1][key], key
    w0, w1 = ranks[0]["best_weights"], ranks[1]["best_weights"]
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    m = summary(run_dir)["metrics"]
    assert m["best_val/epoch"] == ranks[0]["best_epoch"] and m["test/acc_at_best_val"] == ranks[0]["test_acc_at_best"]
