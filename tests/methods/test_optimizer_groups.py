"""Optimizer parameter groups (``optimizer_groups``): weight decay skips exactly the parameters the
recipe exempts, in the optimizer the method base builds."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from timm.optim import param_groups_weight_decay

from sparseforge.errors import ConfigError
from sparseforge.methods.finetune import Finetune
from sparseforge.models import create_model
from sparseforge.utils.param_groups import WeightDecayGroups
from tests.helpers.config import compose_config


def method_with(model, no_decay, weight_decay=0.1):
    optimizer = partial(torch.optim.SGD, lr=1.0, weight_decay=weight_decay)
    return Finetune(model, optimizer, optimizer_groups=WeightDecayGroups(no_decay))


def test_bias_norm_exempts_biases_and_batch_norm_and_decays_only_kernels():
    model = create_model("small_cnn", 10, 3, 32)
    method = method_with(model, ["bias", "norm"])
    expected = {f"model.features.{i}.{p}" for i in (1, 5, 9) for p in ("weight", "bias")} | {"model.fc.bias"}
    assert method.optimizer_groups.exempt(method) == expected
    optimizer = method.configure_optimizers()
    decay, no_decay = optimizer.param_groups
    names = {id(p): n for n, p in method.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} == expected and no_decay["weight_decay"] == 0.0
    kernels = {"model.features.0.weight", "model.features.4.weight", "model.features.8.weight", "model.fc.weight"}
    assert {names[id(p)] for p in decay["params"]} == kernels and decay["weight_decay"] == 0.1
    # one step with zero gradients: only weight decay moves parameters, and only the kernels
    before = {n: p.detach().clone() for n, p in method.named_parameters()}
    for p in method.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in method.named_parameters():
        if name in kernels:
            assert torch.allclose(p, before[name] * 0.9), name
        else:
            assert torch.equal(p, before[name]), name


def test_timm_vit_recipe_exempts_what_timms_own_parameter_groups_exempt():
    vit = create_model("vit_tiny_patch16_224", 100, 3, 32, kwargs={"img_size": 32, "patch_size": 4})
    words = ["bias", "norm", "pos_embed", "cls_token"]
    ours = WeightDecayGroups(words).exempt(vit)
    timm_groups = param_groups_weight_decay(vit, weight_decay=0.05, no_weight_decay_list=vit.no_weight_decay())
    names = {id(p): n for n, p in vit.named_parameters()}
    timm_exempt = {names[id(p)] for g in timm_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert ours == timm_exempt and {"pos_embed", "cls_token", "norm.weight", "head.bias"} <= ours
    assert "patch_embed.proj.weight" not in ours and "blocks.0.attn.qkv.weight" not in ours


def test_without_exemptions_the_optimizer_gets_one_plain_group():
    model = create_model("small_cnn", 10, 3, 32)
    optimizer = method_with(model, []).configure_optimizers()
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["weight_decay"] == 0.1
    assert len(optimizer.param_groups[0]["params"]) == len(list(model.parameters()))


def test_a_name_that_matches_no_parameter_is_one_config_error():
    model = create_model("small_cnn", 10, 3, 32)
    with pytest.raises(ConfigError, match=r"optimizer_groups\.no_decay: 'pos_embd' matches no parameter"):
        method_with(model, ["bias", "pos_embd"]).configure_optimizers()


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("rigl_cifar100", ["bias", "norm"]),
        ("set_cifar100", ["bias", "norm"]),
        ("pgf_nm_vit_cifar100", ["bias", "norm", "pos_embed", "cls_token"]),
        ("srste_nm_vit_cifar100", ["bias", "norm", "pos_embed", "cls_token"]),
        ("random_pruning_cifar10", []),  # Random_Pruning decays every parameter (SGD on model.parameters())
        ("sparcl_cifar10", []),
    ],
)
def test_presets_choose_their_recipes_weight_decay_groups(preset, expected):
    cfg = compose_config([f"+experiment={preset}"])
    assert list(cfg.optimizer_groups.no_decay) == expected
