"""Forward/backward rules of the N:M modes, layer selection, and the N:M invariant after every step."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.errors import ConfigError
from sparseforge.sparsity.nm import NMSchedule, NMSparsifier, dense_weight, group_counts, nm_mask


def one_layer(mode: str, weight, bias=0.5, **schedule) -> tuple[nn.Linear, NMSparsifier]:
    layer = nn.Linear(len(weight), 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weight]))
        layer.bias.fill_(bias)
    model = nn.Sequential(layer)
    sparsifier = NMSparsifier(model, NMSchedule(n=2, m=4, mode=mode, **schedule))
    return layer, sparsifier


# Hand-checked example: w = [1, -2, 0.5, 3], 2:4 keeps -2 and 3 (mask [0, 1, 0, 1]);
# x = [2, 1, 3, -1]; loss = y = w~ . x + b, so dL/dw~ = x = [2, 1, 3, -1] and dL/db = 1.
W = [1.0, -2.0, 0.5, 3.0]
X = torch.tensor([[2.0, 1.0, 3.0, -1.0]])


def grads(layer: nn.Linear) -> tuple[list[float], float]:
    layer(X).sum().backward()
    return dense_weight(layer).grad[0].tolist(), float(layer.bias.grad)


def test_ste_forward_masks_and_gradient_passes_straight_through():
    layer, sp = one_layer("ste", W)
    sp.set_position(0, 10)
    assert layer.weight[0].tolist() == [0.0, -2.0, 0.0, 3.0]
    assert float(layer(X).detach()) == pytest.approx(-2.0 * 1 + 3.0 * -1 + 0.5)
    assert grads(layer) == ([2.0, 1.0, 3.0, -1.0], 1.0)


def test_srste_gradient_equals_the_formula_by_hand():
    # dL/dw = dL/dw~ + lambda * (1 - mask) * w with lambda = 0.1: pruned w=1 -> 2 + 0.1, pruned w=0.5 -> 3 + 0.05
    layer, sp = one_layer("srste", W, srste_lambda=0.1)
    sp.set_position(0, 10)
    weight_grad, bias_grad = grads(layer)
    assert weight_grad == pytest.approx([2.1, 1.0, 3.05, -1.0])
    assert bias_grad == 1.0


def test_srste_term_goes_through_the_optimizer_step():
    layer, sp = one_layer("srste", W, srste_lambda=0.1)
    sp.set_position(0, 10)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer(X).sum().backward()
    opt.step()
    assert dense_weight(layer)[0].tolist() == pytest.approx([1 - 2.1, -2 - 1.0, 0.5 - 3.05, 3 + 1.0])
    assert float(layer.bias.detach()) == pytest.approx(0.5 - 1.0)  # the bias trains (the official release drops it)


def test_srste_default_lambda_is_2e_4():
    assert NMSchedule().srste_lambda == 2e-4


def test_mdgf_forward_scales_pruned_weights_and_backward_is_ste_by_default():
    layer, sp = one_layer("mdgf", W, decay="linear")
    sp.set_position(5, 10)  # alpha = 0.5
    assert layer.weight[0].tolist() == pytest.approx([0.5, -2.0, 0.25, 3.0])
    assert float(layer(X).detach()) == pytest.approx(0.5 * 2 - 2 + 0.25 * 3 - 3 + 0.5)
    assert grads(layer) == ([2.0, 1.0, 3.0, -1.0], 1.0)


def test_mdgf_autograd_variant_scales_the_gradient_by_the_mask():
    layer, sp = one_layer("mdgf", W, decay="linear", decay_backward="autograd")
    sp.set_position(5, 10)
    assert grads(layer)[0] == pytest.approx([1.0, 1.0, 1.5, -1.0])


def test_eval_mode_uses_the_binary_mask_mid_decay():
    layer, sp = one_layer("mdgf", W, decay="linear")
    sp.set_position(5, 10)
    layer.eval()
    assert layer.weight[0].tolist() == [0.0, -2.0, 0.0, 3.0]


def test_dense_warmup_uses_raw_weights_and_plain_gradients():
    layer, sp = one_layer("srste", W, srste_lambda=0.1, dense_fraction=0.5)
    sp.set_position(4, 10)
    assert layer.weight[0].tolist() == W
    assert grads(layer) == ([2.0, 1.0, 3.0, -1.0], 1.0)
    sp.set_position(5, 10)
    assert layer.weight[0].tolist() == [0.0, -2.0, 0.0, 3.0]


def test_training_without_a_position_is_an_error_not_a_dense_fallback():
    layer, _ = one_layer("ste", W)
    with pytest.raises(RuntimeError, match="position was never set"):
        layer(X)


def test_mask_is_computed_from_the_fp32_master_weight_under_autocast():
    layer, sp = one_layer("ste", [1.0, 1.0001, 0.2, 0.3])  # 1.0 and 1.0001 are equal in bf16
    sp.set_position(0, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(X)
    assert y.dtype == torch.bfloat16
    assert layer.weight[0].tolist() == pytest.approx([1.0, 1.0001, 0.0, 0.0])


# -- the invariant after every optimizer step -------------------------------------------------------
class ConvNet(nn.Module):
    def __init__(self, c: int, width: int):
        super().__init__()
        self.conv = nn.Conv2d(c, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, width)
        self.fc2 = nn.Linear(width, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1))))


@settings(max_examples=20, deadline=None)
@given(
    nm=st.sampled_from([(2, 4), (1, 4), (1, 8), (1, 16)]),
    mode=st.sampled_from(["ste", "srste", "mdgf", "sdgf"]),
    groups=st.integers(1, 3),
    total=st.integers(4, 16),
    dense=st.sampled_from([0.0, 0.2]),
    seed=st.integers(0, 1000),
)
def test_every_group_has_exactly_the_scheduled_n_after_every_step(nm, mode, groups, total, dense, seed):
    n, m = nm
    torch.manual_seed(seed)
    model = ConvNet(c=groups * m, width=groups * m)
    schedule = NMSchedule(n=n, m=m, mode=mode, dense_fraction=dense, decay="linear")
    sp = NMSparsifier(model, schedule, exclude=["fc"] if (4 * 4 * 4) % m else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(5, groups * m, 4, 4), torch.randint(0, 3, (5,))
    for t in range(total):
        sp.set_position(t, total)
        model.train()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        train_phase, hard_phase = schedule.phase(t, total), schedule.phase(t, total, hard=True)
        for name, layer in sp.layers.items():
            effective = layer.weight.detach()
            if train_phase.dense:
                assert torch.equal(effective, dense_weight(layer).detach())
                continue
            mask = nm_mask(dense_weight(layer), hard_phase.n, hard_phase.m)
            if train_phase.binary:
                assert bool((group_counts(effective, train_phase.m) == train_phase.n).all()), name
            else:  # MdGf soft mask: kept weights unchanged, pruned ones scaled by exactly alpha
                dense_w = dense_weight(layer).detach()
                assert torch.equal(effective[mask], dense_w[mask])
                assert torch.allclose(effective[~mask], train_phase.alpha * dense_w[~mask])
            layer.eval()
            assert bool((group_counts(layer.weight.detach(), hard_phase.m) == hard_phase.n).all()), name
        assert sp.verify() == hard_phase


# -- layer selection ----------------------------------------------------------------------------
def test_default_selection_is_the_paper_vit_recipe():
    import timm

    from sparseforge.lightning.nm_sparsity import NMSparsityCallback

    vit = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4, depth=2)
    callback = NMSparsityCallback(n=1, m=8, mode="mdgf")
    callback.preflight(vit)
    assert sorted(callback.sparsifier.layers) == [
        "blocks.0.mlp.fc1",
        "blocks.0.mlp.fc2",
        "blocks.1.mlp.fc1",
        "blocks.1.mlp.fc2",
    ]
    assert not hasattr(vit.patch_embed.proj, "parametrizations")
    assert not hasattr(vit.blocks[0].attn.qkv, "parametrizations")
    assert not hasattr(vit.head, "parametrizations")
    assert vit.blocks[0].mlp.fc1.bias is not None and vit.blocks[0].mlp.fc1.bias.requires_grad


def test_indivisible_layer_is_one_config_error_naming_it():
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    with pytest.raises(ConfigError) as err:
        NMSparsifier(model, NMSchedule(n=1, m=8, mode="ste"))
    message = str(err.value)
    assert "\n" not in message and "layer 2 has input dimension 12, not divisible by M=8" in message
    assert "sparsity.indivisible=dense" in message


def test_geometric_sdgf_needs_8m():
    model = nn.Sequential(nn.Linear(32, 8))  # fine for 1:8, but the first geometric stage is 8:64
    with pytest.raises(ConfigError, match="not divisible by 8M=64"):
        NMSparsifier(model, NMSchedule(n=1, m=8, mode="sdgf", structure="geometric"))
    model = nn.Sequential(nn.Linear(128, 8))
    assert list(NMSparsifier(model, NMSchedule(n=1, m=8, mode="sdgf", structure="geometric")).layers) == ["0"]


def test_densify_sdgf_needs_8m_too():
    with pytest.raises(ConfigError, match="not divisible by 8M=32"):
        NMSparsifier(nn.Sequential(nn.Linear(16, 8)), NMSchedule(n=1, m=4, mode="sdgf", structure="densify"))


def test_column_grouping_through_the_sparsifier_and_export():
    from sparseforge.sparsity.nm.export import hard_masks

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8))
    sp = NMSparsifier(model, NMSchedule(n=1, m=4, mode="srste"), sparse_dim="col")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for t in range(3):
        sp.set_position(t, 10)
        model(torch.randn(5, 12)).sum().backward()
        opt.step()
        opt.zero_grad()
        for layer in sp.layers.values():
            effective = layer.weight.detach()
            assert bool((group_counts(effective, 4, dim=0) == 1).all())
            assert torch.equal(effective != 0, nm_mask(dense_weight(layer), 1, 4, dim=0))
        assert sp.verify().pattern == "1:4"
    masks, _ = hard_masks(model)
    assert all(bool((group_counts(mask, 4, dim=0) == 1).all()) for mask in masks.values())
    with pytest.raises(ConfigError, match="layer 0 has output dimension 6, not divisible by M=4"):
        NMSparsifier(nn.Sequential(nn.Linear(8, 6)), NMSchedule(n=1, m=4, mode="ste"), sparse_dim="col")
    with pytest.raises(ConfigError, match="sparsity.sparse_dim: unknown value 'diag'"):
        NMSparsifier(nn.Sequential(nn.Linear(8, 8)), NMSchedule(n=1, m=4, mode="ste"), sparse_dim="diag")


def test_indivisible_dense_leaves_the_layer_dense_and_says_so(caplog):
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    with caplog.at_level("WARNING", logger="sparseforge"):
        sp = NMSparsifier(model, NMSchedule(n=1, m=8, mode="ste"), indivisible="dense")
    assert list(sp.layers) == ["0"] and sp.dense_by_shape == ["2"]
    assert "layer 2" in caplog.text and "DENSE" in caplog.text


def test_position_buffers_travel_with_the_state_dict():
    def build():
        model = nn.Sequential(nn.Linear(16, 4))
        return model, NMSparsifier(model, NMSchedule(n=1, m=8, mode="sdgf"))

    a, sp_a = build()
    sp_a.set_position(7, 10)
    b, sp_b = build()
    b.load_state_dict(a.state_dict())
    assert sp_b.position() == (7, 10)
    assert sp_b.phase() == sp_a.phase()
    assert torch.equal(b[0].weight, a[0].weight)


def test_srste_term_survives_fp16_loss_scaling():
    layer, sp = one_layer("srste", W, srste_lambda=0.1)
    sp.set_position(0, 10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    sp.set_loss_scale(lambda: scaler._scale)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    scaler.scale(layer(X).sum()).backward()
    scaler.unscale_(opt)
    assert dense_weight(layer).grad[0].tolist() == pytest.approx([2.1, 1.0, 3.05, -1.0])
