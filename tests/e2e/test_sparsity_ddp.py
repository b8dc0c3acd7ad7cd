"""Masks under real DDP (2 CPU processes over gloo): identical on every rank after every update."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from sparseforge.models import create_model
from sparseforge.sparsity import Sparsifier
from tests.helpers.cli import run_cli
from tests.helpers.ddp import free_port
from tests.helpers.engine import train_on_noise

pytestmark = [pytest.mark.ddp, pytest.mark.slow]


def worker(rank: int, world: int, port: int, rule: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(rank)  # different initial weights per rank: DDP must make them agree
    model = create_model("small_cnn", num_classes=10, in_chans=3, image_size=16, channels=[8, 16, 16])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    # A different seed per rank on purpose: rank 0's decisions must still win everywhere.
    sparsifier = Sparsifier(model, optimizer, density=0.2, update_rule=rule, delta_t=2, total_steps=20, seed=rank)
    ddp = DistributedDataParallel(model)
    train_on_noise(ddp, optimizer, sparsifier, 12, (3, 16, 16), seed=100 + rank)  # each rank its own data
    torch.save(
        {
            "masks": {n: sparsifier.masks[n].clone() for n in sparsifier.masks},
            # parameters (BN running statistics are per rank between DDP's buffer broadcasts)
            "weights": {k: v.detach().clone() for k, v in model.named_parameters()},
            "history": sparsifier.history,
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    # Leave together: a rank tearing gloo down while the other is still in its last collective
    # can abort the process ("terminate called without an active exception", seen once in CI).
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("rule", ["rigl", "set"])
def test_masks_and_weights_agree_across_ranks_after_several_updates(tmp_path, rule):
    mp.spawn(worker, args=(2, free_port(), rule, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(r0["history"]) == 6  # updates after steps 2, 4, ..., 12 (T_end = 15)
    assert r0["history"] == r1["history"] and all(h[1] > 0 for h in r0["history"])
    for name in r0["masks"]:
        assert torch.equal(r0["masks"][name], r1["masks"][name]), name
    for key in r0["weights"]:
        assert torch.equal(r0["weights"][key], r1["weights"][key]), key


def test_lightning_ddp_cpu_run_keeps_masks_identical_and_counts_exact(tmp_path):
    # Sparsifier.check() compares per-layer mask fingerprints across ranks after every update,
    # so any divergence would fail this run.
    result = run_cli(
        [
            "hardware=ddp_cpu",
            "logger=none",
            "scenario=iid",
            "scenario.epochs_per_task=2",
            "sparsity.delta_t=2",
            "run_name=ddp",
            "print_config=false",
            "trainer.enable_progress_bar=false",
        ],
        env={"SPARSEFORGE_ROOT": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "outputs" / "ddp" / "summary.json").read_text())
    sparsity = summary["sparsity"]
    assert summary["status"] == "completed" and sparsity["updates"] >= 2
    horizon = sparsity["schedule_steps"]
    assert sparsity["updates"] == len([t for t in range(2, horizon + 1, 2) if t < 0.75 * horizon])
    assert sparsity["density"] == pytest.approx(0.1, abs=1e-4)
    assert summary["flops"]["samples_trained"] > 0
