"""SparCL under real DDP (2 CPU processes, gloo): every rank ends with the same masks, gradient
masks, removed examples and forgetting statistics."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from tests.helpers.cli import run_cli
from tests.helpers.fake_data import write_mnist_like


class SparCLStateDump(pl.Callback):
    """Saves this rank's SparCL state at the end of training (used through +callbacks.dump)."""

    def on_train_end(self, trainer, pl_module) -> None:
        sp = pl_module.sparsifier
        state = {
            "masks": {n: sp.masks[n].cpu() for n in sp.masks},
            "grad_masks": {n: m.cpu() for n, m in sp.masks.grad_masks.items()},
            "weights": {k: v.detach().cpu() for k, v in pl_module.model.named_parameters()},
            "ddr": pl_module.data_removal.state_dict(),
            "tdm_grads": sp.rule.state_dict()["last_grads"],
        }
        torch.save(state, Path(trainer.default_root_dir) / f"sparcl_rank{trainer.global_rank}.pt")


@pytest.mark.ddp
@pytest.mark.slow
def test_sparcl_state_is_identical_on_every_rank(tmp_path):
    write_mnist_like(tmp_path, n_train=400, n_test=100)
    run_dir = tmp_path / "run"
    proc = run_cli(
        [
            "hardware=ddp_cpu",
            "dataset=mnist",
            f"paths.data_dir={tmp_path}",
            "dataset.download=false",
            "model=mlp",
            "model.hidden_sizes=[32,32]",
            "scenario=class_il",
            "scenario.n_tasks=2",
            "scenario.epochs_per_task=4",
            "method=sparcl",
            "method.buffer_size=50",
            "method.ddr.removal_epochs=[1,2]",
            "method.dgm.refresh_every=2",
            "sparsity=sparcl",
            "sparsity.include=[features.*]",
            "sparsity.tdm.every_epochs=1",
            "sparsity.tdm.phase_epochs=[1,3]",
            "data.batch_size=10",
            "logger=none",
            "print_config=false",
            f"hydra.run.dir={run_dir}",
            "+callbacks.dump._target_=tests.e2e.test_sparcl_ddp.SparCLStateDump",
        ],
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(run_dir / f"sparcl_rank{r}.pt", weights_only=False) for r in (0, 1)]
    for key in ("masks", "grad_masks", "weights", "tdm_grads"):
        a, b = ranks[0][key], ranks[1][key]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), key
    ddr = [r["ddr"] for r in ranks]
    assert ddr[0]["history"] == ddr[1]["history"] and len(ddr[0]["history"]) == 4
    for key in ("removed", "presented", "forgetting", "ever_correct", "last_correct"):
        assert torch.equal(ddr[0][key], ddr[1][key]), key
    # Both ranks' batches entered the statistics, each example once per epoch: after task 1's
    # removal before epoch 2, its 140 remaining examples were presented in epochs 2 and 3.
    presented = ddr[0]["presented"]
    assert int((presented == 2).sum()) == 140 and int(presented.sum()) == 280
