"""Sparse execution backends under real DDP (2 CPU processes, gloo): ranks agree after updates."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from sparseforge.models import create_model
from sparseforge.sparsity import Sparsifier
from tests.helpers.ddp import free_port
from tests.helpers.engine import train_on_noise

pytestmark = [pytest.mark.ddp, pytest.mark.slow]


def worker(rank: int, world: int, port: int, backend: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(rank)  # different initial weights per rank: DDP must make them agree
    model = create_model("mlp", num_classes=10, in_chans=1, image_size=8, hidden_sizes=[64, 32])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sparsifier = Sparsifier(
        model, optimizer, density=0.2, update_rule="rigl", delta_t=2, total_steps=20, seed=rank, backend=backend
    )
    ddp = DistributedDataParallel(model)  # after the backend: DDP sees the compressed values
    train_on_noise(ddp, optimizer, sparsifier, 10, (1, 8, 8), seed=100 + rank)  # each rank its own data
    torch.save(
        {
            "masks": {n: sparsifier.masks[n].clone() for n in sparsifier.masks},
            "state": {k: v.clone() for k, v in model.state_dict().items()},
            "history": sparsifier.history,
            "compressed": sorted(sparsifier.masks.compressed),
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("backend", ["csr", "auto"])
def test_masks_and_values_agree_across_ranks_after_updates(tmp_path, backend):
    mp.spawn(worker, args=(2, free_port(), backend, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["compressed"] == ["fc", "features.1", "features.3"]
    assert len(r0["history"]) == 5 and r0["history"] == r1["history"]  # updates after steps 2, 4, ..., 10
    assert all(h[1] > 0 for h in r0["history"])
    for name in r0["masks"]:
        assert torch.equal(r0["masks"][name], r1["masks"][name]), name
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key
