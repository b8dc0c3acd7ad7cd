"""Soft targets (``data.batch_transform``, e.g. mixup): the methods with a plain cross-entropy train
on them, one-hot soft targets give exactly the hard-label loss, and exactly the documented methods
take them (tests/lightning/test_data_pipeline_train.py: the others refuse at start)."""

from __future__ import annotations

import importlib
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.lightning.datamodule import Batch
from sparseforge.methods import ER, Finetune
from sparseforge.methods.replay import ReplayBatch
from sparseforge.models.mlp import MLP
from tests.helpers.cli import REPO
from tests.helpers.config import compose_config

SOFT_TARGET_METHODS = {"finetune", "joint", "er"}  # as docs/data.md lists them


def batch(n: int, seed: int, target=None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Batch(raw.float() / 255, y, torch.zeros(n, dtype=torch.long), torch.arange(n), raw, target)


def er_replaying(seed: int, n_replayed: int) -> ER:
    torch.manual_seed(seed)
    method = ER(MLP(64, 10, (16,)), optimizer=partial(torch.optim.SGD, lr=0.1), buffer_size=20)
    drawn = batch(n_replayed, seed + 1)
    method.replay = lambda: ReplayBatch(drawn.x, drawn.y, drawn.task, None)
    method.remember = lambda batch, logits=None: None
    return method


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 8), replayed=st.integers(1, 8), seed=st.integers(0, 1000))
def test_er_one_hot_soft_targets_give_the_hard_label_loss(n, replayed, seed):
    method = er_replaying(seed, replayed)
    hard = batch(n, seed)
    soft = hard._replace(target=F.one_hot(hard.y, 10).float())
    torch.testing.assert_close(method.observe(soft), method.observe(hard))


def test_er_trains_the_current_rows_on_soft_targets_and_the_replayed_rows_on_labels():
    method = er_replaying(0, 3)
    current = batch(4, 0)
    target = torch.softmax(torch.randn(4, 10), 1)
    loss = method.observe(current._replace(target=target))
    drawn = method.replay()
    logits = method(torch.cat([current.x, drawn.x]))
    expected = F.cross_entropy(logits, torch.cat([target, F.one_hot(drawn.y, 10).float()]))
    torch.testing.assert_close(loss, expected)


def test_finetune_trains_on_soft_targets():
    torch.manual_seed(0)
    method = Finetune(MLP(64, 10, (16,)), optimizer=partial(torch.optim.SGD, lr=0.1))
    current = batch(5, 0)
    target = torch.softmax(torch.randn(5, 10), 1)
    torch.testing.assert_close(
        method.observe(current._replace(target=target)), F.cross_entropy(method(current.x), target)
    )


def method_class(option: str) -> type:
    module, _, name = compose_config([f"method={option}"]).method._target_.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("option", sorted(p.stem for p in (REPO / "configs" / "method").glob("*.yaml")))
def test_exactly_the_documented_methods_take_soft_targets(option):
    cls = method_class(option)
    if option == "sparcl":  # a factory over its base methods: both refuse
        from sparseforge.methods.sparcl import SparCLDERPP, SparCLER

        assert not SparCLDERPP.supports_soft_targets and not SparCLER.supports_soft_targets
        return
    assert cls.supports_soft_targets == (option in SOFT_TARGET_METHODS)
