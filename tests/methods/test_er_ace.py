"""ER-ACE: what its two cross-entropies receive, and its seen-class state across DDP ranks.

Exact resume (the seen classes go into checkpoints) is in test_cl_resume.py; quality on Split
MNIST in test_cl_quality.py."""

from __future__ import annotations

import os
from functools import partial
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sparseforge.methods import er_ace
from sparseforge.methods.er_ace import ERACE
from sparseforge.train import train
from tests.helpers.cl import QUIET, one_thread, summary
from tests.helpers.config import compose_config
from tests.helpers.ddp import free_port


@pytest.mark.parametrize("task_free", [False, True], ids=["mammoth", "task_free"])
def test_current_batch_sees_its_classes_and_unseen_ones_replay_sees_all(tmp_path, monkeypatch, task_free):
    steps: list[int] = []  # the task of every training step, in order
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []  # (logits, labels) of every cross-entropy

    def recording_cross_entropy(logits, y):
        calls.append((logits.detach().clone(), y.clone()))
        return F.cross_entropy(logits, y)

    observe = ERACE.observe

    def recording_observe(self, batch):
        steps.append(self.current_task)
        return observe(self, batch)

    monkeypatch.setattr(er_ace, "F", SimpleNamespace(cross_entropy=recording_cross_entropy))
    monkeypatch.setattr(ERACE, "observe", recording_observe)
    with one_thread():
        overrides = [*QUIET, "method=er_ace", "callbacks=none", f"method.task_free={task_free}"]
        train(compose_config(overrides, output_dir=tmp_path / "run"))
    assert summary(tmp_path / "run")["status"] == "completed"

    seen: set[int] = set()  # worked out from the labels alone, independently of the method
    masked_steps = 0
    for step, task in enumerate(steps):
        logits, y = calls.pop(0)
        present = set(y.tolist())
        seen |= present
        masked_columns = {c for c in range(logits.shape[1]) if torch.isneginf(logits[:, c]).all()}
        if task == 0 and not task_free:  # as Mammoth: plain cross-entropy, nothing replayed
            assert masked_columns == set() and torch.isfinite(logits).all()
            continue
        # the seen classes absent from the batch are masked in every row, nothing else is
        assert masked_columns == seen - present
        assert torch.isfinite(logits[:, sorted(set(range(logits.shape[1])) - masked_columns)]).all()
        masked_steps += bool(masked_columns)
        if step == 0:  # task-free: the buffer is still empty at the very first step
            continue
        replayed_logits, replayed_y = calls.pop(0)
        assert torch.isfinite(replayed_logits).all() and set(replayed_y.tolist()) <= seen
    assert not calls  # one cross-entropy per step without replay, two with it
    assert masked_steps > 0 and 0 in steps and max(steps) == 4


def test_the_cosine_classifier_replaces_the_last_linear_layer_by_scaled_cosine_similarity():
    from sparseforge.models import create_model
    from sparseforge.models.heads import CosineLinear
    from sparseforge.sparsity import select_layers

    torch.manual_seed(0)
    method = ERACE(create_model("mlp", 10, 1, 8), partial(torch.optim.SGD, lr=0.1))
    heads = [(n, m) for n, m in method.model.named_modules() if isinstance(m, CosineLinear)]
    assert len(heads) == 1 and heads[0][1].bias is None and heads[0][1].scale == 10.0
    name, head = heads[0]
    assert name == list(select_layers(method.model))[-1]  # still the classifier the engine can sparsify
    features = []
    head.register_forward_hook(lambda module, inputs, output: features.append(inputs[0]))
    logits = method(torch.randn(6, 1, 8, 8)).detach()
    # Mammoth's CustomLinear: 10 * <x / (|x| + 1e-5), w / (|w| + 1e-5)>, about 10 * cos(x, w)
    expected = 10 * F.cosine_similarity(features[0][:, None, :], head.weight[None, :, :], dim=2).detach()
    assert torch.allclose(logits, expected, atol=1e-3) and float(logits.abs().max()) <= 10.0
    for model_name in ("resnet18_cifar", "vit_tiny_patch16_224"):
        kwargs = {"img_size": 32, "patch_size": 4, "depth": 1} if model_name.startswith("vit") else None
        model = ERACE(create_model(model_name, 10, 3, 32, kwargs=kwargs), partial(torch.optim.SGD, lr=0.1)).model
        classifier = model.get_classifier() if hasattr(model, "get_classifier") else model.fc
        assert isinstance(classifier, CosineLinear) and classifier.out_features == 10
    linear = ERACE(create_model("mlp", 10, 1, 8), partial(torch.optim.SGD, lr=0.1), cosine_classifier=False)
    assert not any(isinstance(m, CosineLinear) for m in linear.model.modules())


def test_a_model_without_a_linear_classifier_is_one_config_error():
    from sparseforge.errors import ConfigError

    convs_only = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten())
    with pytest.raises(ConfigError, match="method.cosine_classifier"):
        ERACE(convs_only, partial(torch.optim.SGD, lr=0.1))


def _see_on_two_ranks(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    method = ERACE(torch.nn.Linear(4, 6), partial(torch.optim.SGD, lr=0.1))
    # each rank's batches hold classes the other rank's never do
    present = [method.see(torch.tensor(y), num_classes=6) for y in ([[0, 0, 1], [1]], [[2], [3, 2]])[rank]]
    torch.save({"seen": method.seen_classes, "present": present}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.ddp
@pytest.mark.slow
def test_seen_classes_are_the_union_over_ranks(tmp_path):
    mp.spawn(_see_on_two_ranks, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    union = torch.tensor([True, True, True, True, False, False])
    assert torch.equal(r0["seen"], union) and torch.equal(r1["seen"], union)
    # the mask of a batch uses that rank's own classes
    assert r0["present"][1].nonzero().flatten().tolist() == [1]
    assert r1["present"][1].nonzero().flatten().tolist() == [2, 3]
