"""Replay under real DDP (2 CPU processes, gloo): one global stream, identical buffers on every rank."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.cl import QUIET, summary
from tests.helpers.cli import run_cli


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
    # Each rank evaluates its share of the test split; the confusion matrices, summed over ranks,
    # count every test example of digits (450) once and agree with the accuracy matrix.
    cl = s["cl"]
    confusion = cl["confusion_matrix"][-1]
    assert sum(map(sum, confusion)) == 1797 - stream
    for j, classes in enumerate(cl["task_classes"]):
        correct, total = sum(confusion[c][c] for c in classes), sum(sum(confusion[c]) for c in classes)
        assert cl["acc_matrix"][-1][j] == pytest.approx(correct / total)


@pytest.mark.ddp
@pytest.mark.slow
def test_resume_inside_an_epoch_under_ddp_is_exact(tmp_path):
    """Both ranks resume their own share of the epoch at the batch after the step checkpoint."""
    common = [
        *QUIET,
        "hardware=ddp_cpu",
        "method=derpp",
        "method.buffer_size=300",
        "scenario.n_tasks=2",
        "scenario.epochs_per_task=2",
        "model.dropout=0.2",
        "callbacks.model_checkpoint.every_n_train_steps=3",
    ]
    env = {"OMP_NUM_THREADS": "1"}
    full, cut = tmp_path / "full", tmp_path / "cut"
    for args in (
        [*common, f"hydra.run.dir={full}"],
        # 2 ranks x batch 32 over task 0's ~700 examples: 11 steps per epoch; step 24 is batch 2 of
        # epoch 2 (task 1), and max_steps stops the run right after that step's checkpoint
        [*common, f"hydra.run.dir={cut}", "trainer.max_steps=24"],
        [*common, f"hydra.run.dir={cut}", "ckpt_path=auto"],
    ):
        proc = run_cli(args, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        if "trainer.max_steps=24" in args:
            saved = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)
            loop = saved["loops"]["fit_loop"]
            assert saved["global_step"] == 24 and saved["epoch"] == 2
            assert loop["state_dict"]["combined_loader"] == [{"batches_served": 2}]
    a, b = summary(full), summary(cut)
    assert b["status"] == "completed" and b["resumed_from"].endswith("last.ckpt")
    assert a["cl"]["acc_matrix"] == b["cl"]["acc_matrix"]
    wa = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    wb = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.equal(wa["state_dict"][k], wb["state_dict"][k]) for k in wa["state_dict"])
    assert torch.equal(wa["method_state"]["buffer"]["x"], wb["method_state"]["buffer"]["x"])


@pytest.mark.ddp
@pytest.mark.slow
def test_cl_dst_keeps_identical_masks_and_weights_on_every_rank(tmp_path):
    """CL-with-DST under DDP: every rank draws, updates, stores and merges the same masks, and the
    merged model still gives each task exactly the accuracy it had when it ended."""
    run_dir = tmp_path / "run"
    proc = run_cli(
        [
            *QUIET,
            "hardware=ddp_cpu",
            "method=cl_dst",
            "scenario=task_il",
            "optimizer=adam",
            "optimizer.lr=0.01",
            "method.growth=random_unfired",
            "method.update_frequency=3",
            "scenario.epochs_per_task=2",
            f"hydra.run.dir={run_dir}",
            "+callbacks.dump._target_=tests.helpers.cl.cl_dst_dump",
        ],
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(run_dir / f"cl_dst_rank{r}.pt", weights_only=True) for r in (0, 1)]
    a, b = ranks
    assert a["store"]["task_ids"] == b["store"]["task_ids"] == [0, 1, 2, 3, 4]
    for t in range(5):
        assert all(torch.equal(a["store"]["masks"][t][n], b["store"]["masks"][t][n]) for n in a["store"]["merged"])
    assert all(torch.equal(a["store"]["merged"][n], b["store"]["merged"][n]) for n in a["store"]["merged"])
    assert all(torch.equal(a["masks"]["fired"][n], b["masks"]["fired"][n]) for n in a["masks"]["fired"])
    s = summary(run_dir)
    R = s["cl"]["acc_matrix_task_il"]
    assert all(R[t][k] == R[k][k] for k in range(5) for t in range(k, 5))
    assert all(e["updates"] > 0 for e in s["cl_dst"]["updates"])


def test_a_domain_il_stream_under_ddp(tmp_path, data_dir):
    """Permuted MNIST on 2 ranks: both buffers hold the same examples with their task ids, and
    every task's view of the test split is evaluated once over the ranks."""
    from tests.helpers.fake_data import write_mnist_like

    n_test = 100
    write_mnist_like(data_dir, n_train=200, n_test=n_test)
    run_dir = tmp_path / "run"
    proc = run_cli(
        [
            "+experiment=perm_mnist",
            *QUIET,
            "hardware=ddp_cpu",
            f"paths.data_dir={data_dir}",
            "dataset.download=false",
            "scenario.n_tasks=2",
            "data.batch_size=20",
            "method=derpp",
            "method.buffer_size=100",
            f"hydra.run.dir={run_dir}",
            "+callbacks.dump._target_=tests.helpers.cl.buffer_dump",
        ],
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(run_dir / f"buffer_rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key in ("x", "y", "task", "logits", "valid"):
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    assert set(ranks[0]["task"][ranks[0]["valid"]].tolist()) == {0, 1}
    cl = summary(run_dir)["cl"]
    assert cl["scenario"] == "domain_il" and cl["completed_tasks"] == 2
    assert sum(map(sum, cl["confusion_matrix"][0])) == n_test  # task 0's view
    assert sum(map(sum, cl["confusion_matrix"][1])) == 2 * n_test  # both views, each once
