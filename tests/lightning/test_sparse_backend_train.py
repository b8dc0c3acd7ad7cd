"""Sparse execution backends inside real training runs (Lightning, the composed config, digits)."""

from __future__ import annotations

import json

import pytest
import torch

from sparseforge.errors import ConfigError
from sparseforge.train import train
from tests.helpers.config import compose_config
from tests.lightning.test_sparsity_callback import sparsity_state


def summary_of(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_a_class_il_replay_run_with_auto_reports_its_kernels_and_plans(tmp_path):
    # ER: the optimizer is re-created at every task and replay forwards twice per step
    run_dir = tmp_path / "run"
    overrides = ["logger=none", "scenario.epochs_per_task=1", "sparsity.delta_t=4", "sparsity.backend=auto"]
    train(compose_config(overrides, output_dir=run_dir))
    summary = summary_of(run_dir)
    assert summary["status"] == "completed"
    sparsity = summary["sparsity"]
    execution = sparsity["execution"]
    assert sparsity["backend"] == "auto" and execution["backend"] == "auto"
    assert set(execution["executors"]) == set(sparsity["layers"])
    assert set(execution["auto_choices"]) == set(sparsity["layers"])
    assert all(c["ms"] and c["executor"] in c["ms"] for c in execution["auto_choices"].values())
    # one plan per layer changed by an update (a layer with nothing to move keeps its plan)
    assert sparsity["updates"] <= execution["plan_builds"] <= sparsity["updates"] * len(sparsity["layers"])
    assert sparsity["mask_cache_bytes"] == 0  # every sparse layer is compressed: no masking pass, no cache
    assert summary["flops"]["inference_relative_to_dense"] < 1
    state, weights = sparsity_state(run_dir / "checkpoints" / "last.ckpt")
    for name, mask in state["masks"]["masks"].items():  # the checkpoint holds dense weights, as masked writes
        assert weights[f"model.{name}.weight"].shape == mask.shape
        assert torch.count_nonzero(weights[f"model.{name}.weight"][~mask]) == 0


@pytest.mark.parametrize("cache", [True, False])
def test_the_masked_path_reports_its_mask_cache(tmp_path, cache):
    run_dir = tmp_path / "run"
    train(compose_config(["logger=none", "debug=fdr", f"sparsity.mask_cache={cache}"], output_dir=run_dir))
    sparsity = summary_of(run_dir)["sparsity"]
    assert sparsity["backend"] == "masked" and "execution" not in sparsity
    weights = sum(sparsity["layer_nnz"][n] / d for n, d in sparsity["layers"].items())
    # fp32 copies of every mask, or none at all (the bool masks only)
    assert sparsity["mask_cache_bytes"] == pytest.approx(4 * weights if cache else 0, rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("first,second", [("csr", "masked"), ("masked", "auto")])
def test_resume_with_another_backend_ends_where_an_unswitched_run_ends(tmp_path, first, second):
    overrides = ["scenario=iid", "method=finetune", "data.batch_size=128", "scenario.epochs_per_task=3"]
    overrides += ["sparsity.delta_t=3", "logger=none", "seed=11", "optimizer=adamw"]
    straight = tmp_path / "straight"
    train(compose_config([*overrides, f"sparsity.backend={first}"], output_dir=straight))
    switched = tmp_path / "switched"
    interrupt = ["+callbacks.interrupt._target_=tests.lightning.test_sparsity_callback.InterruptAtEpoch"]
    interrupt += ["+callbacks.interrupt.epoch=1"]
    with pytest.raises(RuntimeError, match="simulated preemption"):
        train(compose_config([*overrides, f"sparsity.backend={first}", *interrupt], output_dir=switched))
    partial, _ = sparsity_state(switched / "checkpoints" / "last.ckpt")
    assert 0 < partial["updates_done"] < 8  # stopped between updates
    train(compose_config([*overrides, f"sparsity.backend={second}", "ckpt_path=auto"], output_dir=switched))
    a, weights_a = sparsity_state(straight / "checkpoints" / "last.ckpt")
    b, weights_b = sparsity_state(switched / "checkpoints" / "last.ckpt")
    assert a["updates_done"] == b["updates_done"] == 8 and a["history"] == b["history"]
    for name in a["masks"]["masks"]:
        assert torch.equal(a["masks"]["masks"][name], b["masks"]["masks"][name]), name
    for key in weights_a:  # the sparse kernels sum in another order: float tolerance
        torch.testing.assert_close(weights_b[key], weights_a[key], rtol=1e-4, atol=1e-5)
    assert summary_of(switched)["sparsity"]["backend"] == second


def test_a_bad_backend_fails_before_training_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"sparsity\.backend: unknown value 'gpu'"):
        train(compose_config(["logger=none", "debug=fdr", "sparsity.backend=gpu"], output_dir=tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


class CoupledAdadelta(torch.optim.Optimizer):
    """Adadelta's options, but its state couples weights (a stand-in for Shampoo-like optimizers)."""

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
        super().__init__(params, {"lr": lr})

    def step(self, closure=None):
        return None


def test_a_non_elementwise_optimizer_fails_before_the_first_step(tmp_path):
    overrides = ["logger=none", "debug=fdr", "sparsity.backend=csr", "optimizer=adadelta"]
    overrides += ["optimizer._target_=tests.lightning.test_sparse_backend_train.CoupledAdadelta"]
    with pytest.raises(ConfigError, match=r"sparsity\.backend: backend=csr .*CoupledAdadelta is not one"):
        train(compose_config(overrides, output_dir=tmp_path / "run"))
