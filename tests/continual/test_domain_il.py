"""Domain-incremental streams (Permuted and Rotated MNIST) through the real config: every task is
the whole split seen through its own fixed transform, in training, in replay and in evaluation,
and every method that runs class-IL runs here."""

from __future__ import annotations

import pytest
import torch

from sparseforge.continual.evaluation import evaluate_tasks
from sparseforge.errors import ConfigError
from sparseforge.train import build, train
from tests.helpers.cl import QUIET, one_thread, summary
from tests.helpers.config import compose_config
from tests.helpers.fake_data import write_mnist_like

N_TRAIN, N_TEST = 200, 100


@pytest.fixture
def mnist(data_dir):
    return write_mnist_like(data_dir, n_train=N_TRAIN, n_test=N_TEST)


def _overrides(data_dir, preset="perm_mnist", *extra):
    return [
        f"+experiment={preset}",
        *QUIET,
        f"paths.data_dir={data_dir}",
        "dataset.download=false",
        "scenario.n_tasks=3",
        "data.batch_size=32",
        "callbacks=none",
        *extra,
    ]


def _build(tmp_path, data_dir, *extra, preset="perm_mnist", name="run"):
    return build(compose_config(_overrides(data_dir, preset, *extra), output_dir=tmp_path / name))


def _view(dm, raw: torch.Tensor, task: int) -> torch.Tensor:
    """Task ``task``'s view of raw images, computed from the task transform itself."""
    return dm.transform.task_transform(raw.float() / 255, torch.full((len(raw),), task))


def test_every_task_is_the_whole_split_with_every_class(tmp_path, mnist):
    dm = _build(tmp_path, mnist).datamodule
    assert dm.n_tasks == 3 and dm.n_training_ids == 3 * N_TRAIN
    for task in dm.tasks:
        assert task.classes == tuple(range(10))
        images, tasks = dm.locate(task.train_index)
        assert torch.equal(images, torch.arange(N_TRAIN)) and bool((tasks == task.id).all())
        assert torch.equal(task.test_index, torch.arange(N_TEST))


@pytest.mark.parametrize("preset", ["perm_mnist", "rot_mnist"])
def test_training_batches_are_seen_through_their_tasks_transform(tmp_path, mnist, preset):
    dm = _build(tmp_path, mnist, preset=preset).datamodule
    views = []
    for task in dm.tasks:
        batch = dm.on_after_batch_transfer(next(iter(dm.train_loader_for(task.train_index, epoch=task.id))), 0)
        assert bool((batch.task == task.id).all())
        assert torch.equal(batch.x, _view(dm, batch.raw, task.id))  # normalize: false in the preset
        assert float(batch.x.min()) >= 0 and float(batch.x.max()) <= 1
        views.append(_view(dm, dm.train_data.x[:8], task.id))
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])  # tasks differ


@pytest.mark.parametrize("preset", ["perm_mnist", "rot_mnist"])
def test_the_transforms_are_fixed_by_the_seed(tmp_path, mnist, preset):
    def params(*extra, name):
        t = _build(tmp_path, mnist, *extra, preset=preset, name=name).datamodule.transform.task_transform
        return t.permutations if preset == "perm_mnist" else t.angles

    first, again = params("seed=1", name="a"), params("seed=1", name="b")
    assert torch.equal(first, again)
    assert not torch.equal(first, params("seed=2", name="c"))
    pinned = params("seed=2", "scenario.transform_seed=1", name="d")  # transform_seed overrides the run seed
    assert torch.equal(pinned, first)


def test_evaluating_task_j_uses_task_js_transform(tmp_path, mnist):
    r = _build(tmp_path, mnist)
    dm = r.datamodule
    seen: list[torch.Tensor] = []

    def score(x):
        seen.append(x)
        return torch.zeros(len(x), 10)

    evaluate_tasks(score, dm.eval_batches, dm.test_data.y, dm.tasks, torch.device("cpu"), batch_size=N_TEST)
    assert len(seen) == 3
    for j, x in enumerate(seen):
        assert torch.equal(x, _view(dm, dm.test_data.x, j))


def test_a_replayed_example_gets_the_view_it_was_trained_with(tmp_path, mnist):
    views = tmp_path / "views.pt"
    overrides = _overrides(
        mnist,
        "perm_mnist",
        "method=er",
        "method.buffer_size=120",
        "+callbacks.views._target_=tests.helpers.cl.record_replayed_views",
        f"+callbacks.views.path={views}",
    )
    with one_thread():
        train(compose_config(overrides, output_dir=tmp_path / "run"))
    rows = torch.load(views, weights_only=True)
    assert len(rows["task"]) == 120 and set(rows["task"].tolist()) == {0, 1, 2}  # every task in the buffer
    assert torch.equal(rows["replayed"], rows["trained"])
    # and each task's view is its own: the same image through another task's permutation differs
    other = (rows["task"] + 1) % 3
    assert not torch.equal(rows["replayed"], rows["other_task"]) and bool((other != rows["task"]).all())


@pytest.mark.parametrize(
    "method, extra",
    [
        ("finetune", []),
        ("joint", []),
        ("er", []),
        ("er_ace", []),
        ("der", []),
        ("derpp", []),
        ("ewc_on", []),
        ("si", []),
        ("agem", ["method.buffer_size=60"]),
        ("lwf", []),
        ("icarl", ["method.buffer_size=60"]),
        ("gdumb", ["method.buffer_size=60"]),
        ("sparcl", ["sparsity=sparcl", "sparsity.include=[features.*]", "method.buffer_size=60"]),
        (
            "sharp",
            [
                "model=sharp_mnistlike",
                "~model.hidden_sizes",  # the preset's MLP widths
                "sparsity=dense",
                "optimizer.lr=0.1",
                "method.phase_epochs=1",
                "method.max_phases=1",
                "method.selection_samples=64",
            ],
        ),
    ],
)
def test_every_class_il_method_runs_domain_incremental(tmp_path, mnist, method, extra):
    overrides = _overrides(mnist, "perm_mnist", f"method={method}", "debug=fdr", *extra)
    if method in ("er", "er_ace", "der", "derpp"):
        overrides.append("method.buffer_size=60")
    if not extra or method in ("agem", "icarl", "gdumb"):
        overrides.append("sparsity=dense")
    with one_thread():
        train(compose_config(overrides, output_dir=tmp_path / "run"))
    s = summary(tmp_path / "run")
    cl = s["cl"]
    assert s["status"] == "completed" and cl["scenario"] == "domain_il" and cl["completed_tasks"] == 3
    assert all(v is not None for v in cl["acc_matrix"][-1])
    assert "acc_matrix_task_il" not in cl and "test/acc_task_il" not in s["metrics"]  # one head, shared classes
    assert len(cl["per_class_acc"]) == 3 and len(cl["confusion_matrix"][-1]) == 10


def test_joint_trains_on_every_earlier_tasks_view(tmp_path, mnist):
    r = _build(tmp_path, mnist, "method=joint", "sparsity=dense")
    tasks = r.datamodule.tasks
    for task in tasks:
        ids = r.method.training_indices(task, tasks)
        assert len(ids) == (task.id + 1) * N_TRAIN
        assert set(r.datamodule.locate(ids)[1].tolist()) == set(range(task.id + 1))


def test_sharps_raw_image_replay_is_refused_in_one_line(tmp_path, mnist):
    overrides = [
        "model=sharp_mnistlike",
        "~model.hidden_sizes",  # the preset's MLP widths
        "method=sharp",
        "sparsity=dense",
        "method.replay_layer=input",
    ]
    with pytest.raises(ConfigError, match="config error: method.replay_layer: raw-image replay .* domain-incremental"):
        _build(tmp_path, mnist, *overrides)


def test_a_domain_il_stream_without_a_task_transform_is_one_config_error(tmp_path, mnist):
    overrides = ["scenario.task_transform=null"]
    with pytest.raises(ConfigError, match="config error: scenario.task_transform: .*transform per task"):
        _build(tmp_path, mnist, *overrides)


def test_ewcs_fisher_of_a_task_is_taken_on_that_tasks_view(tmp_path, mnist):
    """A domain-IL task's training ids run past the split (task t: t * N + i); the Fisher after
    task t is the per-example estimate over the whole split seen through task t's transform."""
    from sparseforge.methods.ewc_on import weighted_squared_gradients

    r = _build(tmp_path, mnist, "method=ewc_on", "sparsity=dense")
    method, dm = r.method, r.datamodule
    method.trainer = r.trainer  # the method reads its datamodule through the trainer
    r.trainer.datamodule = dm
    params = method.regularised_parameters()
    for task in dm.tasks[1:]:
        expected = weighted_squared_gradients(
            method.model, params, [(_view(dm, dm.train_data.x, task.id), dm.train_data.y)]
        )
        fisher = method.fisher_information(task.train_index)
        for name, value in fisher.items():
            torch.testing.assert_close(value, expected[name] / N_TRAIN)
        other = weighted_squared_gradients(method.model, params, [(_view(dm, dm.train_data.x, 0), dm.train_data.y)])
        assert any(not torch.allclose(fisher[n], other[n] / N_TRAIN) for n in fisher)  # the views differ


def test_agems_memory_of_each_task_holds_that_tasks_images(tmp_path, mnist):
    overrides = _overrides(mnist, "perm_mnist", "method=agem", "sparsity=dense", "method.buffer_size=60")
    r = build(compose_config(overrides, output_dir=tmp_path / "run"))
    with one_thread():
        r.trainer.fit(r.method, datamodule=r.datamodule)
    buffer, dm = r.method.buffer, r.datamodule
    valid = buffer.valid
    assert len(buffer) == 60 and sorted(buffer.task[valid].tolist()) == sorted([0, 1, 2] * 20)
    stored = buffer.x[valid].flatten(1)
    # every stored example is an image of the split, with its own label (ids t * N + i map to image i)
    match = (stored.unsqueeze(1) == dm.train_data.x.flatten(1).unsqueeze(0)).all(-1)
    assert bool(match.any(1).all())
    first = match.float().argmax(1)
    assert torch.equal(buffer.y[valid], dm.train_data.y[first])
