"""Per-task transforms (Permuted and Rotated MNIST), the normalisation switch and the weight
initialisation schemes: each does what its option says."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.data import MNIST
from sparseforge.data.task_transforms import PixelPermutation, Rotation
from sparseforge.data.transforms import DeviceTransform
from sparseforge.errors import ConfigError
from sparseforge.models import create_model
from sparseforge.models.init import initialise


def _images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


# -- permutations ----------------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_tasks=st.integers(2, 6))
def test_each_task_permutes_the_pixels_its_own_fixed_way(seed, n_tasks):
    perm = PixelPermutation(n_tasks, (1, 28, 28), seed)
    again = PixelPermutation(n_tasks, (1, 28, 28), seed)
    assert torch.equal(perm.permutations, again.permutations)  # fixed by the seed
    rows = {tuple(p.tolist()) for p in perm.permutations}
    assert len(rows) == n_tasks  # every task its own permutation
    for p in perm.permutations:
        assert torch.equal(p.sort().values, torch.arange(784))  # a permutation of all 784 pixels


def test_a_mixed_batch_gets_each_example_its_own_tasks_permutation():
    perm = PixelPermutation(3, (1, 28, 28), seed=7)
    x, task = _images(), torch.tensor([0, 1, 2, 2, 1, 0])
    out = perm(x, task)
    for i in range(len(x)):
        expected = x[i].flatten()[perm.permutations[task[i]]].view(1, 28, 28)  # Mammoth's Permutation
        assert torch.equal(out[i], expected)
    assert not torch.equal(out[0], perm(x[:1], torch.tensor([1]))[0])  # another task, another view
    assert not torch.equal(PixelPermutation(3, (1, 28, 28), seed=8).permutations, perm.permutations)


def test_task_ids_outside_the_stream_are_refused():
    with pytest.raises(ValueError, match="task ids"):
        PixelPermutation(2, (1, 28, 28))(_images(1), torch.tensor([2]))


# -- rotations -------------------------------------------------------------------------------------
def test_rotation_angles_are_fixed_per_task_and_drawn_in_the_range():
    rot = Rotation(20, seed=3)
    assert torch.equal(rot.angles, Rotation(20, seed=3).angles)
    assert not torch.equal(rot.angles, Rotation(20, seed=4).angles)
    assert len(set(rot.angles.tolist())) == 20
    assert float(rot.angles.min()) >= 0.0 and float(rot.angles.max()) < 180.0
    narrow = Rotation(50, seed=0, degrees=(10, 20)).angles
    assert 10 <= float(narrow.min()) and float(narrow.max()) < 20


def test_rotation_matches_torchvision_rotate_of_each_example_by_its_tasks_angle():
    rot = Rotation(4, seed=11)
    raw = (_images(8) * 255).round().to(torch.uint8)
    task = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    out = rot(raw.float() / 255, task)
    for i in range(len(raw)):
        expected = TF.rotate(raw[i], float(rot.angles[task[i]])).float() / 255  # nearest, fill 0
        assert torch.equal(out[i], expected)


def test_bad_rotation_options_are_one_config_error():
    with pytest.raises(ConfigError, match="scenario.task_transform.degrees"):
        Rotation(2, degrees=(90, 10))
    with pytest.raises(ConfigError, match="scenario.task_transform.interpolation"):
        Rotation(2, interpolation="cubic")


def test_the_device_transform_applies_the_task_transform_before_normalising():
    perm = PixelPermutation(2, (1, 28, 28), seed=1)
    t = DeviceTransform(MNIST.mean, MNIST.std, normalize=True, task_transform=perm)
    raw = (_images(3) * 255).to(torch.uint8)
    task = torch.tensor([1, 0, 1])
    expected = (perm(raw.float() / 255, task) - MNIST.mean[0]) / MNIST.std[0]
    assert torch.allclose(t(raw, train=True, task=task), expected)
    assert torch.equal(t(raw, train=False, task=1), t(raw, train=False, task=torch.ones(3, dtype=torch.long)))
    with pytest.raises(ValueError, match="task ids"):
        t(raw, train=True)  # a per-task stream without task ids is a bug, not a silent identity


# -- normalisation ---------------------------------------------------------------------------------
def test_normalisation_off_feeds_the_unit_interval_values():
    raw = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    off = DeviceTransform(MNIST.mean, MNIST.std, normalize=False)(raw, train=True)
    assert torch.equal(off, raw.float() / 255) and float(off.min()) >= 0 and float(off.max()) <= 1
    on = DeviceTransform(MNIST.mean, MNIST.std)(raw, train=True)
    assert torch.allclose(on, (off - MNIST.mean[0]) / MNIST.std[0])
    assert float(on.min()) < 0  # what normalisation does to black pixels


# -- weight initialisation -------------------------------------------------------------------------
def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def test_xavier_init_is_mammoths_xavier_uniform_with_zero_bias():
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=10, in_chans=1, image_size=28, hidden_sizes=[100, 100], init="xavier")
    for layer in _linears(model):
        fan_out, fan_in = layer.weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))  # Mammoth: sqrt(3) * sqrt(2 / (fan_in + fan_out))
        w = layer.weight.detach()
        assert float(w.abs().max()) <= bound
        assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.05 * bound / math.sqrt(3)  # uniform's std
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


def test_default_and_kaiming_init_differ_from_xavier_as_documented():
    torch.manual_seed(0)
    default = create_model("mlp", num_classes=10, in_chans=1, image_size=28, hidden_sizes=[100, 100])
    assert all(bool(layer.bias.abs().sum() > 0) for layer in _linears(default))  # torch's uniform bias
    first = _linears(default)[0].weight.detach()
    assert abs(float(first.std()) - 1 / math.sqrt(3 * 784)) < 0.05 / math.sqrt(3 * 784)  # kaiming_uniform(a=sqrt 5)
    kaiming = initialise(default, "kaiming")
    first = _linears(kaiming)[0].weight.detach()
    assert abs(float(first.std()) - math.sqrt(2 / 784)) < 0.05 * math.sqrt(2 / 784)
    assert torch.equal(_linears(kaiming)[0].bias, torch.zeros(100))


def test_init_reaches_conv_layers_and_leaves_batch_norm_alone():
    torch.manual_seed(0)
    cnn = create_model("small_cnn", num_classes=10, in_chans=1, image_size=28, channels=[8, 8, 8], init="xavier")
    conv = next(m for m in cnn.modules() if isinstance(m, nn.Conv2d))
    fan_in, fan_out = conv.weight[0].numel(), conv.weight.shape[0] * conv.weight[0, 0].numel()
    assert float(conv.weight.detach().abs().max()) <= math.sqrt(6.0 / (fan_in + fan_out))
    bn = next(m for m in cnn.modules() if isinstance(m, nn.BatchNorm2d))
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))


def test_an_unknown_init_scheme_is_one_config_error():
    with pytest.raises(ConfigError, match="config error: model.init: unknown scheme 'he'.*default, xavier, kaiming"):
        create_model("mlp", num_classes=10, in_chans=1, image_size=8, init="he")
