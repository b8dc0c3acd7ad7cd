"""The defining invariant of each baseline (online EWC, SI, LwF, iCaRL, A-GEM, GDumb, PackNet).

End-to-end runs of every method on every scenario are in test_cl_methods.py, exact resume in
tests/lightning/test_cl_resume.py, DDP in tests/e2e/test_cl_ddp.py, quality on Split MNIST in
the study configs/study/cl_baselines_split_mnist.yaml."""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.continual.herding import herding_order
from sparseforge.errors import ConfigError
from sparseforge.lightning.continual_loop import ContinualLoop
from sparseforge.methods.agem import AGEM, project_gradient
from sparseforge.methods.ewc_on import OnlineEWC, weighted_squared_gradients
from sparseforge.methods.gdumb import GDumb
from sparseforge.methods.icarl import ICaRL
from sparseforge.methods.lwf import LwF
from sparseforge.methods.packnet import FREE, PackNet
from sparseforge.methods.si import SynapticIntelligence
from sparseforge.train import build
from tests.helpers.cl import QUIET, one_thread
from tests.helpers.config import compose_config


def fit(tmp_path: Path, overrides: list[str], *callbacks: pl.Callback, name: str = "run"):
    """Build the real config, add ``callbacks`` and fit; returns the Run."""
    with one_thread():
        run = build(compose_config([*QUIET, "callbacks=none", *overrides], output_dir=tmp_path / name))
        run.trainer.callbacks.extend(callbacks)
        run.trainer.fit(run.method, datamodule=run.datamodule)
    return run


def task_il_matrix(run) -> list[list[float | None]]:
    return next(c for c in run.trainer.callbacks if isinstance(c, ContinualLoop)).acc_task_il


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


# -- online EWC --------------------------------------------------------------------------------------
def test_ewc_penalty_is_zero_at_the_anchor_and_quadratic_away_from_it():
    ewc = OnlineEWC(small_model(), optimizer=partial(torch.optim.SGD, lr=0.1))
    params = ewc.regularised_parameters()
    ewc.anchor = ewc.parameter_values()
    g = torch.Generator().manual_seed(1)
    ewc.importance = {n: torch.rand(p.shape, generator=g) for n, p in params.items()}
    direction = {n: torch.randn(p.shape, generator=g) for n, p in params.items()}
    assert ewc.penalty().item() == 0.0
    values = []
    for t in (0.5, 1.0, 2.0, 3.0):
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(ewc.anchor[n] + t * direction[n])
        values.append(ewc.penalty().item())
    expected = sum((ewc.importance[n] * direction[n].square()).sum().item() for n in params)
    assert values == pytest.approx([expected * t * t for t in (0.5, 1.0, 2.0, 3.0)], rel=1e-5)
    # and it is what the loss pays, with weight e_lambda: its gradient is 2 lambda F (theta - anchor)
    loss = ewc.penalty_weight * ewc.penalty()
    loss.backward()
    for n, p in params.items():
        torch.testing.assert_close(p.grad, ewc.penalty_gradient(n, p.detach()))


def test_ewc_fisher_is_mammoths_per_example_estimate():
    """vmap'ed per-example gradients against Mammoth's loop: one backward per example."""
    model = small_model().eval()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(13, 6, generator=g), torch.randint(0, 3, (13,), generator=g)
    params = dict(model.named_parameters())
    fast = weighted_squared_gradients(model, params, [(x[:5], y[:5]), (x[5:], y[5:])])
    slow = {n: torch.zeros_like(p) for n, p in params.items()}
    for xi, yi in zip(x, y, strict=True):
        model.zero_grad()
        log_p = -F.cross_entropy(model(xi[None]), yi[None])
        log_p.backward()
        for n, p in params.items():
            slow[n] += log_p.exp().detach() * p.grad.square()
    for n in params:
        torch.testing.assert_close(fast[n], slow[n], rtol=1e-5, atol=1e-8)


def test_ewc_fisher_accumulates_with_gamma_across_tasks(tmp_path):
    """After task t the importance is gamma * (importance after t-1) + F_t, and the anchor is
    the weights at the task's end."""
    seen = []

    class Record(pl.Callback):
        def on_train_epoch_end(self, trainer, m):  # after the task loop's end_task (it runs first)
            seen.append(({n: t.clone() for n, t in m.importance.items()}, m.parameter_values(), m.current_task))

    run = fit(
        tmp_path,
        [
            "method=ewc_on",
            "method.gamma=0.5",
            "scenario.n_tasks=5",
            "scenario.epochs_per_task=1",
            "optimizer.momentum=0",
            "optimizer.lr=0.03",
        ],
        Record(),
    )
    method, dm = run.method, run.datamodule
    assert [t for *_, t in seen] == [0, 1, 2, 3, 4]
    fisher_last = method.fisher_information(dm.tasks[4].train_index)
    before, after = seen[3][0], seen[4][0]
    for n in after:
        torch.testing.assert_close(after[n], 0.5 * before[n] + fisher_last[n])
        torch.testing.assert_close(method.anchor[n], seen[4][1][n])


# -- SI ----------------------------------------------------------------------------------------------
def si_with(model: nn.Module) -> SynapticIntelligence:
    return SynapticIntelligence(model, optimizer=partial(torch.optim.SGD, lr=0.1), c=0.7, xi=0.1)


def test_si_importance_accumulates_only_from_gradient_times_update():
    model = small_model()
    si = si_with(model)
    params = si.regularised_parameters()
    si.anchor = si.parameter_values()
    si.path_integral = {n: torch.zeros_like(t) for n, t in si.anchor.items()}
    # weight decay moves every parameter, but only a gradient makes a parameter important
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.5)
    frozen = "3.weight"
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        optimizer.zero_grad()
        F.cross_entropy(model(torch.randn(8, 6, generator=g)), torch.randint(0, 3, (8,), generator=g)).backward()
        params[frozen].grad.zero_()
        before = {n: p.detach().clone() for n, p in params.items()}
        grads = {n: p.grad.clone() for n, p in params.items()}
        si.start_step()
        optimizer.step()
        si.accumulate_path_integral()
        for n, p in params.items():
            expected[n] -= grads[n] * (p.detach() - before[n])
        with torch.no_grad():  # a move outside an optimizer step (a mask update, say) adds nothing
            params["1.bias"].add_(1.0)
    for n in params:
        torch.testing.assert_close(si.path_integral[n], expected[n])
    assert bool((params[frozen].detach() != si.anchor[frozen]).all())  # it moved ...
    assert bool((si.path_integral[frozen] == 0).all())  # ... and earned no importance
    # plain SGD: -g * delta = lr * g * (g + wd * theta), positive where the gradient dominates
    assert sum(float(v.sum()) for v in si.path_integral.values()) > 0


def test_si_path_integral_leaves_out_the_penalty_gradient():
    model = small_model()
    si = si_with(model)
    params = si.regularised_parameters()
    si.anchor = {n: t + 0.3 for n, t in si.parameter_values().items()}  # away from the anchor
    si.importance = {n: torch.full_like(t, 2.0) for n, t in si.anchor.items()}
    si.path_integral = {n: torch.zeros_like(t) for n, t in si.anchor.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    task_loss = F.cross_entropy(model(x), y)
    task_grads = dict(
        zip(params, torch.autograd.grad(task_loss, list(params.values()), retain_graph=True), strict=True)
    )
    (task_loss + si.penalty_weight * si.penalty()).backward()
    before = si.parameter_values()
    si.start_step()
    optimizer.step()
    si.accumulate_path_integral()
    for n, p in params.items():
        torch.testing.assert_close(si.path_integral[n], -task_grads[n] * (p.detach() - before[n]))


def test_si_consolidates_the_path_integral_over_the_distance_travelled():
    si = si_with(small_model())
    si.anchor = si.parameter_values()
    si.path_integral = {n: torch.rand_like(t) for n, t in si.anchor.items()}
    omega, start = dict(si.path_integral), dict(si.anchor)
    with torch.no_grad():
        for p in si.regularised_parameters().values():
            p.add_(torch.randn_like(p))
    theta = si.parameter_values()
    si.end_task(None)
    for n in theta:
        torch.testing.assert_close(si.importance[n], omega[n] / ((theta[n] - start[n]).square() + 0.1))
        torch.testing.assert_close(si.anchor[n], theta[n])
        assert bool((si.path_integral[n] == 0).all())


# -- LwF ---------------------------------------------------------------------------------------------
def test_lwf_previous_model_does_not_change_while_the_next_task_trains(tmp_path):
    snapshots = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, m, outputs, batch, batch_idx):
            if m.current_task == 1:
                snapshots.append((m.previous.state_dict(), {k: v.clone() for k, v in m.model.state_dict().items()}))

        def on_train_epoch_start(self, trainer, m):
            if m.current_task == 1 and not snapshots:
                frozen = m.previous.module
                assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
                in_optimizer = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
                assert not in_optimizer & {id(p) for p in frozen.parameters()}
                assert not frozen._forward_pre_hooks  # the FLOPs counter stays on the live model

    fit(tmp_path, ["method=lwf", "scenario.n_tasks=5", "scenario.epochs_per_task=1", "optimizer.momentum=0"], Watch())
    first_old, first_live = snapshots[0]
    assert len(snapshots) > 5
    for old, _ in snapshots[1:]:
        assert all(torch.equal(old[k], first_old[k]) for k in first_old)
    last_live = snapshots[-1][1]
    assert any(not torch.equal(last_live[k], first_live[k]) for k in first_live)  # the student did train


def test_lwf_distils_only_the_classes_the_previous_model_knew(tmp_path):
    from sparseforge.methods.lwf import soft_cross_entropy

    old = torch.tensor([[2.0, 0.0, 5.0]])
    # matching the teacher minimises the term; its minimum is the teacher's own entropy
    assert soft_cross_entropy(old, old, 2.0) < soft_cross_entropy(torch.zeros(1, 3), old, 2.0)
    run = fit(tmp_path, ["method=lwf", "scenario.n_tasks=5", "scenario.epochs_per_task=1", "trainer.max_epochs=2"])
    m = run.method
    past = m.past_classes(10, torch.device("cpu"))
    assert sorted(torch.nonzero(past).flatten().tolist()) == sorted(run.datamodule.tasks[0].classes)


class RecordsFirstSteps:
    """Keeps, for the first steps of the second task, the weights, batch and loss of each step."""

    records: list

    def observe(self, batch):
        loss = super().observe(batch)
        if self.current_task == 1 and len(self.records) < 6:
            self.records.append((copy.deepcopy(self.model.state_dict()), batch.x.clone(), batch.y.clone(), loss.item()))
        return loss


class RecordingLwF(RecordsFirstSteps, LwF):
    pass


class RecordingICaRL(RecordsFirstSteps, ICaRL):
    pass


def lwf_loss(m, logits, old, y, past, seen):
    ce = F.cross_entropy(logits.masked_fill(~seen, float("-inf")), y)
    target = F.softmax(old[:, past] / m.options.temperature, 1)
    kd = -(target * F.log_softmax(logits[:, past] / m.options.temperature, 1)).sum(1).mean()
    return ce + m.options.alpha * kd


def icarl_loss(m, logits, old, y, past, seen):
    targets = torch.where(past, torch.sigmoid(old), F.one_hot(y, logits.shape[1]).float())
    return F.binary_cross_entropy_with_logits(logits, targets)


@pytest.mark.parametrize(
    "cls, overrides, expected_loss",
    [
        (RecordingLwF, ["method=lwf", "method.alpha=3.0", "method.temperature=1.5"], lwf_loss),
        (RecordingICaRL, ["method=icarl", "method.buffer_size=100"], icarl_loss),
    ],
)
def test_distillation_targets_are_the_previous_models_outputs(tmp_path, cls, overrides, expected_loss):
    """The loss of a step of task 1, rebuilt from scratch with the weights the model had when
    task 0 ended as the teacher: the teacher is that model, not the live one."""
    cls.records = []
    run = fit(tmp_path, [*overrides, f"method._target_={cls.__module__}.{cls.__qualname__}", "scenario.n_tasks=5",
                         "scenario.epochs_per_task=1", "optimizer.momentum=0"])  # fmt: skip
    m, records = run.method, cls.records
    assert len(records) == 6
    teacher, student = copy.deepcopy(m.model), copy.deepcopy(m.model)
    teacher.load_state_dict(records[0][0])  # task 1 has not moved it yet at its first step
    teacher.train()
    seen = torch.zeros(10, dtype=torch.bool)
    seen[[*run.datamodule.tasks[0].classes, *run.datamodule.tasks[1].classes]] = True
    past = torch.zeros(10, dtype=torch.bool)
    past[list(run.datamodule.tasks[0].classes)] = True
    with torch.no_grad():
        for state, x, y, loss in records:
            student.load_state_dict(state)
            student.train()
            expected = expected_loss(m, student(x), teacher(x), y, past, seen)
            assert loss == pytest.approx(float(expected), rel=1e-5)
        # the live model as teacher would give another loss: the check above can fail
        state, x, y, loss = records[-1]
        student.load_state_dict(state)
        assert loss != pytest.approx(float(expected_loss(m, student(x), student(x), y, past, seen)), rel=1e-5)


# -- iCaRL -------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 12), st.integers(1, 8), st.integers(0, 2**16))
def test_herding_picks_the_example_that_brings_the_running_mean_nearest_the_class_mean(n, m, d, seed):
    features = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    order = herding_order(features, m)
    assert len(order) == min(m, n) and len(set(order.tolist())) == len(order)
    target = features.double().mean(0)
    chosen: list[int] = []
    for k, pick in enumerate(order.tolist()):
        total = features.double()[chosen].sum(0) if chosen else torch.zeros(d, dtype=torch.double)
        distance = {
            i: float((target - (total + features.double()[i]) / (k + 1)).norm()) for i in range(n) if i not in chosen
        }
        assert distance[pick] == pytest.approx(min(distance.values()), abs=1e-12)
        chosen.append(pick)


def test_icarl_exemplars_are_herded_balanced_and_shrink_to_a_prefix(tmp_path):
    history = []

    class Record(pl.Callback):
        def on_train_epoch_end(self, trainer, m):
            history.append({c: i.clone() for c, i in m.exemplars.items()})

    run = fit(
        tmp_path,
        ["method=icarl", "method.buffer_size=100", "scenario.n_tasks=5", "scenario.epochs_per_task=1"],
        Record(),
    )
    dm, m = run.datamodule, run.method
    for t, exemplars in enumerate(history):
        seen = [c for task in dm.tasks[: t + 1] for c in task.classes]
        assert sorted(exemplars) == sorted(seen)
        assert all(len(i) == min(100 // len(seen), int((dm.train_data.y == c).sum())) for c, i in exemplars.items())
        assert all(bool((dm.train_data.y[i] == c).all()) for c, i in exemplars.items())
        if t:
            for c, i in history[t - 1].items():
                if c not in dm.tasks[t].classes:
                    assert torch.equal(exemplars[c], i[: len(exemplars[c])])  # ReduceExemplarSet
    # the last task's classes: herding on the features of the final model
    c = dm.tasks[-1].classes[0]
    candidates = dm.tasks[-1].train_index[dm.train_data.y[dm.tasks[-1].train_index] == c]
    candidates = torch.unique(candidates)
    expected = candidates[herding_order(m.normalised_features(candidates), 100 // 10)]
    assert torch.equal(m.exemplars[c], expected)
    # the classifier: the nearest class mean wins
    x = dm.preprocess_eval(dm.test_data.x[:20])
    m.eval()
    classes, means = m.class_means()
    features = F.normalize(m.model.features(x).flatten(1), dim=1)
    nearest = torch.tensor(classes)[torch.cdist(features, means).argmin(1)]
    assert torch.equal(m.predict_scores(x).argmax(1), nearest)
    replay = m.summary_section(run.trainer)["replay"]
    assert replay["samples"] == 100 and replay["bytes"] == 100 * replay["bytes_per_sample"]


# -- A-GEM -------------------------------------------------------------------------------------------
vectors = st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_agem_projection_never_points_against_the_reference(data):
    g = torch.tensor(data.draw(vectors), dtype=torch.float64)
    r = torch.tensor(
        data.draw(st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=len(g), max_size=len(g))),
        dtype=torch.float64,
    )
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=len(g), max_size=len(g))))
    g, r = g * mask, r * mask  # both masked, as the sparsity callback and A-GEM leave them
    projected = project_gradient(g, r)
    scale = float(g.norm() * r.norm())
    assert float(projected @ r) >= -1e-9 * max(scale, 1.0)
    assert bool((projected[~mask] == 0).all())  # still masked
    if float(g @ r) >= 0:
        assert projected is g
    else:  # the smallest change that removes the conflict: along r only
        residual = g - projected
        assert float((residual - (residual @ r) / (r @ r) * r).norm()) <= 1e-9 * max(float(g.norm()), 1.0)


class RecordingAGEM(AGEM):
    """A-GEM that keeps, for every projected step, the reference and the gradient it left."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records: list[tuple[float, float]] = []  # (cosine with the reference, largest pruned gradient)

    def reference_gradient(self, params):
        self._last_reference = super().reference_gradient(params)
        return self._last_reference

    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)
        if not self.buffer.is_empty:
            grads = torch.cat([p.grad.flatten() for p in self.model.parameters() if p.grad is not None])
            masks = self.sparsifier.masks
            pruned = torch.cat([(~masks[n]).flatten() for n in masks])
            weights = torch.cat([masks.weight(n).grad.flatten() for n in masks])
            scale = float(grads.norm() * self._last_reference.norm()) + 1e-12
            self.records.append((float(grads @ self._last_reference) / scale, float(weights[pruned].abs().max())))


def test_agem_projected_gradient_is_masked_and_agrees_with_the_memory_in_a_sparse_run(tmp_path):
    run = fit(
        tmp_path,
        ["method=agem", "method._target_=tests.methods.test_baselines.RecordingAGEM", "method.buffer_size=100",
         "method.minibatch_size=32", "sparsity=static", "sparsity.density=0.3", "scenario.n_tasks=5",
         "scenario.epochs_per_task=1"],
    )  # fmt: skip
    assert len(run.method.records) > 20  # every step of tasks 1-4
    assert all(cosine >= -1e-5 and pruned == 0 for cosine, pruned in run.method.records)
    assert min(cosine for cosine, _ in run.method.records) < 1e-3  # some steps were projected
    buffer = run.method.buffer
    assert len(buffer) == 100 - 100 % 5 and set(buffer.task[buffer.valid].tolist()) == {0, 1, 2, 3, 4}


# -- GDumb -------------------------------------------------------------------------------------------
def test_gdumb_buffer_stays_class_balanced_and_the_stream_takes_no_gradient_step(tmp_path):
    checks = []

    class Watch(pl.Callback):
        def on_train_batch_start(self, trainer, m, batch, batch_idx):
            self.before = [p.detach().clone() for p in m.model.parameters()]

        def on_train_batch_end(self, trainer, m, outputs, batch, batch_idx):
            counts = torch.bincount(m.buffer.slot_label[m.buffer.valid])
            counts = counts[counts > 0]
            full = len(m.buffer) == m.buffer.capacity
            checks.append((int(counts.max() - counts.min()), full, trainer.global_step))
            assert all(torch.equal(a, b) for a, b in zip(self.before, m.model.parameters(), strict=True))

    run = fit(
        tmp_path,
        [
            "method=gdumb",
            "method.buffer_size=60",
            "method.fitting_epochs=3",
            "scenario.n_tasks=5",
            "scenario.epochs_per_task=1",
        ],
        Watch(),
    )
    assert checks and all(spread <= 1 for spread, full, _ in checks if full)
    assert [step for *_, step in checks] == list(range(1, len(checks) + 1))  # one (empty) step per batch
    assert task_il_matrix(run)[-1][0] > 0.7  # retrained on the buffer: the first task is still known
    assert run.method.buffer.memory_report()["samples"] == 60


class RecordingGDumb(GDumb):
    """GDumb that keeps the labels of every retraining step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fitted_labels: list[torch.Tensor] = []

    def _fit_step(self, optimizer, raw, y, task, masks):
        self.fitted_labels.append(y.clone())
        super()._fit_step(optimizer, raw, y, task, masks)


def test_gdumb_retrains_from_scratch_on_the_buffer_alone(tmp_path):
    """The retrained weights depend on the buffer and the random state only, not on the weights
    the model had before: it starts from a fresh initialisation. Every retraining epoch is one
    pass over the buffer and nothing else."""
    run = fit(tmp_path, ["method=gdumb", "method._target_=tests.methods.test_baselines.RecordingGDumb",
                         "method.buffer_size=60", "method.fitting_epochs=2", "scenario.n_tasks=5",
                         "scenario.epochs_per_task=1"])  # fmt: skip
    m = run.method
    buffered = torch.sort(m.buffer.slot_label[m.buffer.valid]).values
    results = []
    for start in (0.0, 5.0):
        with torch.no_grad():
            for p in m.model.parameters():
                p.fill_(start)  # a different starting point each time
        m.fitted_labels = []
        torch.manual_seed(123)
        m.retrain(task_id=4)
        results.append([p.detach().clone() for p in m.model.parameters()])
        for epoch in range(2):
            per_epoch = len(m.fitted_labels) // 2
            labels = torch.cat(m.fitted_labels[epoch * per_epoch : (epoch + 1) * per_epoch])
            assert torch.equal(torch.sort(labels).values, buffered)
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
    assert not all(bool((p == 5.0).all()) for p in results[1])


# -- PackNet -----------------------------------------------------------------------------------------
def test_packnet_frozen_weights_never_change_and_task_il_accuracy_never_drops(tmp_path):
    overrides = ["method=packnet", "scenario=task_il", "scenario.n_tasks=5", "scenario.epochs_per_task=2",
                 "task_loop.keep_task_checkpoints=true", "callbacks=default", "optimizer.weight_decay=0.01"]  # fmt: skip
    run = fit(tmp_path, overrides)
    final = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    owner = final["method_state"]["owner"]
    assert {n: int((o == -1).sum()) for n, o in owner.items()} == {n: 0 for n in owner}  # every weight owned
    for k in range(5):
        at_k = torch.load(tmp_path / f"run/checkpoints/task_{k}.ckpt", weights_only=True)
        for name, o in owner.items():
            mine = o <= k
            w_k, w_end = at_k["state_dict"][f"model.{name}.weight"], final["state_dict"][f"model.{name}.weight"]
            assert torch.equal(w_k[mine], w_end[mine]), (k, name)
            assert torch.equal(at_k["method_state"]["owner"][name][mine], o[mine])
        if k == 0:  # biases are shared: trained on the first task only
            biases = [key for key in final["state_dict"] if key.endswith("bias")]
            assert all(torch.equal(at_k["state_dict"][b], final["state_dict"][b]) for b in biases)
    R = task_il_matrix(run)
    for j in range(5):
        assert all(R[t][j] == R[j][j] for t in range(j, 5)), R  # exactly: task j's network never changes
    assert sum(R[4]) / 5 > 0.8


def test_packnet_gives_each_task_its_share_of_every_layer(tmp_path):
    run = fit(tmp_path, ["method=packnet", "scenario=task_il", "scenario.n_tasks=5", "scenario.epochs_per_task=1"])
    s = run.method.summary_section(run.trainer)
    owner = run.method.owner
    for name, o in owner.items():
        counts = torch.bincount(o.flatten().long(), minlength=5)
        if name == s["packnet"]["classifier"]:  # one row per class: the task of the class
            assert counts.tolist() == [2 * o.shape[1]] * 5
        else:
            assert int(counts.max() - counts.min()) <= 5, (name, counts)
    assert s["packnet"]["free"] == 0.0


class RecordingPackNet(PackNet):
    """PackNet that keeps, at each pruning, the free weights it chose from and what it kept."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prunings: list[tuple] = []

    def prune(self, t):
        if self.pruned_task < t:
            free = {n: (self.masks[n] & (self._owner(n) == FREE)).clone() for n in self.masks if n != self.head_name}
            before = {n: self.masks.weight(n).detach().clone() for n in free}
            super().prune(t)
            after = {n: self.masks.weight(n).detach().clone() for n in free}
            self.prunings.append((t, free, before, after, {n: self.masks[n].clone() for n in free}))
        else:
            super().prune(t)


def test_packnet_releases_the_smallest_free_weights_and_evaluates_each_task_with_its_own(tmp_path):
    run = fit(tmp_path, ["method=packnet", "method._target_=tests.methods.test_baselines.RecordingPackNet",
                         "scenario=task_il", "scenario.n_tasks=5", "scenario.epochs_per_task=1"])  # fmt: skip
    m = run.method
    assert [t for t, *_ in m.prunings] == [0, 1, 2, 3, 4]  # once per task
    released_total = 0
    for t, free, before, after, kept in m.prunings:
        for n in free:
            magnitude = before[n].abs()
            stays, released = magnitude[free[n] & kept[n]], magnitude[free[n] & ~kept[n]]
            expected_released = round((1 - 1 / (5 - t)) * int(free[n].sum()))
            assert len(released) == expected_released, (t, n)
            released_total += len(released)
            if len(released) and len(stays):
                assert float(released.max()) <= float(stays.min()), (t, n)  # by magnitude
            assert bool((after[n][free[n] & ~kept[n]] == 0).all())  # released at zero
            assert torch.equal(after[n][kept[n]], before[n][kept[n]])
    assert released_total > 0
    weights = {n: m.masks.weight(n).detach().clone() for n in m.masks}
    for task in run.datamodule.tasks:
        with m.evaluate_task_context(task):
            for n in m.masks:
                later = m.owner[n] > task.id
                assert bool((m.masks.weight(n)[later] == 0).all())
                assert torch.equal(m.masks.weight(n)[~later], weights[n][~later])
        assert all(torch.equal(m.masks.weight(n), weights[n]) for n in m.masks)  # restored on exit


# -- refusals ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, key",
    [
        (["method=packnet"], "scenario"),  # class-IL: no task id at test time
        (["method=packnet", "scenario=blurry"], "scenario"),
        (["method=packnet", "scenario=task_il", "scenario.epochs_per_task=2", "method.retrain_epochs=2"], "method.retrain_epochs"),
        (["method=packnet", "scenario=task_il", "sparsity=rigl"], "sparsity"),
        (["method=gdumb", "sparsity=rigl"], "sparsity"),
        (["method=gdumb", "sparsity=set"], "sparsity"),
        (["method=agem", "method.buffer_size=3"], "method.buffer_size"),
        (["method=icarl", "method.buffer_size=5"], "method.buffer_size"),
        (["method=ewc_on", "method.gamma=1.5"], "method.gamma"),
        (["method=si", "method.xi=0"], "method.xi"),
        (["method=lwf", "method.temperature=0"], "method.temperature"),
        (["method=packnet", "scenario=task_il", "method.prune_fraction=1.0"], "method.prune_fraction"),
    ],
)  # fmt: skip
def test_impossible_setups_fail_at_start_naming_the_key(tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=f"config error: {key}: "):
        build(compose_config([*QUIET, *overrides], output_dir=tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_gdumb_runs_with_static_sparse_masks_kept_through_retraining(tmp_path):
    run = fit(tmp_path, ["method=gdumb", "method.fitting_epochs=2", "sparsity=static", "sparsity.density=0.2",
                         "scenario.n_tasks=5", "scenario.epochs_per_task=1"])  # fmt: skip
    sparsifier = run.method.sparsifier
    sparsifier.check()  # exact counts, pruned weights exactly zero after re-initialisation and retraining
    assert sparsifier.global_density() == pytest.approx(0.2, abs=0.01)
    assert sparsifier.flops.samples_trained >= 5 * 2 * 100  # the retraining epochs are counted
