"""The transform pipeline's parts: transform lists split by where they run, the centre view of
disk-backed images, batch mixing into soft targets (timm's Mixup), per-batch RNG isolation."""

from __future__ import annotations

import random
from functools import partial

import numpy as np
import pytest
import timm.data
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision import transforms as T

from sparseforge.data.transforms import (
    CenterView,
    DeviceTransform,
    RandomCropFlip,
    mix_batch,
    per_image_on_tensors,
    split_transforms,
)
from sparseforge.errors import ConfigError
from sparseforge.utils.seeding import isolated_rng


def test_a_transform_list_splits_into_its_per_image_and_batched_parts():
    assert split_transforms(None, "k") == (None, None)
    assert split_transforms([], "k") == (None, None)
    crop = RandomCropFlip(4, True)
    assert split_transforms([crop], "k") == (None, crop)
    flip = T.RandomHorizontalFlip()
    assert split_transforms(flip, "k") == (flip, None)  # a single transform, as Python callers pass it
    per_image, batched = split_transforms([flip, T.PILToTensor(), crop], "k")
    assert batched is crop
    image = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(2, 6))
    out = per_image(image)
    assert out.dtype == torch.uint8 and out.shape == (1, 2, 6)  # both per-image steps ran, in order


def test_a_per_image_transform_after_a_batched_one_is_one_config_error():
    with pytest.raises(ConfigError) as err:
        split_transforms([RandomCropFlip(4), T.PILToTensor()], "dataset.train_transform")
    assert "dataset.train_transform" in str(err.value) and "\n" not in str(err.value)


def test_per_image_transforms_on_stored_tensors_come_back_on_their_device():
    raw = torch.randint(0, 256, (5, 3, 12, 10), dtype=torch.uint8)
    out = per_image_on_tensors(T.Compose([T.CenterCrop(8), T.PILToTensor()]), raw)
    assert out.dtype == torch.uint8 and out.shape == (5, 3, 8, 8) and out.device == raw.device
    assert torch.equal(out, raw[:, :, 2:10, 1:9])  # the same pixels, through PIL and back
    gray = torch.randint(0, 256, (2, 1, 6, 6), dtype=torch.uint8)
    assert torch.equal(per_image_on_tensors(T.PILToTensor(), gray), gray)


def test_device_transform_normalises_uint8_and_unit_float_inputs_alike():
    raw = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8)
    t = DeviceTransform((0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    assert torch.allclose(t(raw, train=True), t(raw.float() / 255, train=True))
    assert torch.allclose(t(raw, train=False)[:, 0], (raw[:, 0].float() / 255 - 0.5) / 0.2)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(20, 90), w=st.integers(20, 90), size=st.sampled_from([8, 16, 17]))
def test_center_view_is_a_fixed_size_uint8_centre_crop(h, w, size):
    image = Image.fromarray(np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8))
    view = CenterView(size, crop_fraction=1.0)(image)
    assert view.dtype == torch.uint8 and view.shape == (3, size, size)
    # crop_fraction 1: the short side is resized to exactly the crop, so one axis is not cropped
    resized = T.Resize(size)(image)
    left, top = round((resized.width - size) / 2), round((resized.height - size) / 2)  # as CenterCrop
    expected = T.PILToTensor()(resized.crop((left, top, left + size, top + size)))
    assert torch.equal(view, expected)


MIXUP = partial(timm.data.Mixup, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, label_smoothing=0.1)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_mixup_gives_soft_targets_for_every_batch_size(n, seed):
    torch.manual_seed(seed)
    x, y = torch.randn(n, 3, 8, 8), torch.randint(0, 5, (n,))
    mixed, target = mix_batch(MIXUP(num_classes=5), x.clone(), y)
    assert mixed.shape == x.shape and target.shape == (n, 5)
    assert torch.allclose(target.sum(1), torch.ones(n)) and bool((target > 0).all())  # smoothed
    # above the smoothing floor, a row holds only labels of this batch (its own and its partner's)
    above_floor = target > 0.1 / 5 + 1e-6
    assert all(set(torch.nonzero(row).flatten().tolist()) <= set(y.tolist()) for row in above_floor)


def test_an_odd_batch_mixes_every_example_with_another_one():
    torch.manual_seed(0)
    x, y = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 3, 4, 4).clone(), torch.arange(5)
    mix = timm.data.Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, num_classes=5, label_smoothing=0.0)
    mixed, target = mix_batch(mix, x, y)
    assert mixed.shape == (5, 3, 4, 4)
    assert bool(((target > 0).sum(1) == 2).all())  # two classes per row: no example is left alone


@settings(max_examples=20, deadline=None)
@given(key=st.lists(st.integers(0, 2**31), min_size=1, max_size=3), before=st.integers(0, 2**31))
def test_isolated_rng_draws_depend_on_the_key_only_and_leave_the_global_streams_untouched(key, before):
    def draws():
        return torch.rand(3).tolist(), random.random(), float(np.random.rand())

    torch.manual_seed(before)
    random.seed(before)
    np.random.seed(before % 2**32)
    expected_after = draws()
    torch.manual_seed(before)
    random.seed(before)
    np.random.seed(before % 2**32)
    with isolated_rng(*key):
        first = draws()
    assert draws() == expected_after  # the global streams continue as if the block never ran
    torch.manual_seed(before + 1)
    with isolated_rng(*key):
        assert draws() == first  # whatever ran before


def test_a_transform_list_that_mirrors_images_is_recognised():
    import torchvision.transforms as T

    from sparseforge.data.transforms import RandomCropFlip, flips_horizontally

    assert flips_horizontally([RandomCropFlip(padding=4, hflip=True)])
    assert not flips_horizontally([RandomCropFlip(padding=4)]) and not flips_horizontally(None)
    assert flips_horizontally([T.Compose([T.RandomResizedCrop(8), T.RandomHorizontalFlip()]), T.PILToTensor()])
    assert not flips_horizontally([T.Compose([T.RandomResizedCrop(8)]), T.PILToTensor()])


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "symmetric"])
def test_every_padding_mode_fills_the_border_as_torchvision_does(mode):
    from torchvision.transforms.v2 import functional as TF

    from sparseforge.data.transforms import pad_images

    x = torch.randint(0, 256, (3, 3, 9, 7), dtype=torch.uint8)
    expected = TF.pad(x, [4], padding_mode=mode).float()
    assert torch.equal(pad_images(x.float(), 4, mode), expected)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "symmetric"])
def test_a_padded_crop_is_a_window_of_the_padded_image(mode):
    from torchvision.transforms.v2 import functional as TF

    x = torch.rand(16, 3, 8, 8) + 0.1  # no zero pixel
    torch.manual_seed(0)
    out = RandomCropFlip(padding=3, padding_mode=mode)(x)
    padded = TF.pad(x, [3], padding_mode=mode)
    windows = padded.unfold(2, 8, 1).unfold(3, 8, 1)  # N x C x 7 x 7 x 8 x 8: every 8 x 8 window
    for image, crop in zip(windows, out, strict=True):
        matches = (image == crop[:, None, None]).flatten(3).all(-1).all(0)  # 7 x 7: which offsets
        assert matches.any()
    # only zero padding brings zeros in (16 crops all at the centre: probability 49**-16)
    assert (out == 0).any() == (mode == "constant")


def test_an_unknown_padding_mode_and_a_too_wide_reflection_are_one_line():
    with pytest.raises(ConfigError, match="padding_mode: unknown value 'mirror'") as err:
        RandomCropFlip(4, padding_mode="mirror")
    assert "constant, reflect, edge, symmetric" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="too wide to reflect-pad 4 x 4 images"):
        RandomCropFlip(4, padding_mode="reflect")(torch.rand(2, 1, 4, 4))
