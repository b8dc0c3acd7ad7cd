"""How replay methods forward the current batch and their buffer draws (``forward_batches``):
one joint forward when the model has no batch-norm layer (same logits, less per-call cost), one
forward per batch when it has one (Mammoth's DER++ and ER-ACE; a joint forward would normalise
the batches together)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from sparseforge.methods.base import ContinualMethod
from sparseforge.models.mlp import MLP
from sparseforge.models.small_cnn import SmallCNN
from sparseforge.train import build
from tests.helpers.cl import QUIET, one_thread
from tests.helpers.config import compose_config


def count_calls(model: torch.nn.Module) -> list[int]:
    """Batch sizes of every forward call of ``model``, appended as they happen."""
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    return sizes


def method_on(model: torch.nn.Module) -> ContinualMethod:
    return ContinualMethod(model, optimizer=partial(torch.optim.SGD, lr=0.1))


def test_without_batch_norm_one_forward_gives_the_logits_of_separate_forwards():
    torch.manual_seed(0)
    method = method_on(MLP(64, 10, (32, 32)))
    xs = [torch.randn(n, 1, 8, 8) for n in (5, 3, 4)]
    sizes = count_calls(method.model)
    joint = method.forward_batches(*xs)
    assert sizes == [12]
    separate = [method(x) for x in xs]
    assert [len(o) for o in joint] == [5, 3, 4]
    for a, b in zip(joint, separate, strict=True):
        torch.testing.assert_close(a, b)


def test_with_batch_norm_every_batch_is_normalised_on_its_own():
    torch.manual_seed(0)
    method = method_on(SmallCNN(1, 10, (8, 8), batch_norm=True)).train()
    # Batches with very different statistics: a joint forward would normalise them together.
    xs = [torch.randn(6, 1, 8, 8), 5 + 3 * torch.randn(6, 1, 8, 8)]
    sizes = count_calls(method.model)
    outs = method.forward_batches(*xs)
    assert sizes == [6, 6]
    for out, x in zip(outs, xs, strict=True):
        torch.testing.assert_close(out, method(x))
    joint = method(torch.cat(xs)).split(6)
    assert not torch.allclose(joint[0], outs[0], atol=1e-3), "the two batches should not share statistics"


@pytest.mark.parametrize(("model", "calls_per_step"), [("mlp", [96]), ("small_cnn", [32, 32, 32])])
def test_derpp_step_forwards_batch_and_both_draws(tmp_path, model, calls_per_step):
    """Through the real config: once the buffer holds examples, a DER++ step forwards the batch
    and two batch-sized draws: jointly on the MLP, one by one on the batch-norm CNN."""
    overrides = [
        *QUIET,
        "callbacks=none",
        "method=derpp",
        "method.buffer_size=100",
        "data.batch_size=32",
        "trainer.limit_train_batches=4",
        f"model={model}",
    ]
    r = build(compose_config(overrides, output_dir=tmp_path / "run"))
    sizes = count_calls(r.method.model)
    steps: list[list[int]] = []
    observe = r.method.observe

    def recording_observe(batch):
        start = len(sizes)
        loss = observe(batch)
        steps.append(sizes[start:])
        return loss

    r.method.observe = recording_observe
    with one_thread():
        r.trainer.fit(r.method, datamodule=r.datamodule)
    assert steps[0] == [32]  # the buffer is empty at the first step: nothing to replay
    assert steps[1:] and all(s == calls_per_step for s in steps[1:])
