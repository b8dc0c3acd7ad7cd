"""miniImageNet-100 from the user's ImageFolder layout, and CL-with-DST's ResNet-18."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseforge.data import MiniImageNet
from sparseforge.errors import DataNotFoundError
from sparseforge.models import create_model
from sparseforge.sparsity.targets import prunable_layers
from tests.helpers.fake_data import write_mini_imagenet


def test_mini_imagenet_reads_both_splits_with_sorted_class_labels(data_dir):
    write_mini_imagenet(data_dir, per_class_train=2, per_class_test=1)
    ds = MiniImageNet(root=data_dir)
    train, test = ds.load(train=True), ds.load(train=False)
    assert train.x.shape == (200, 3, 32, 32) and test.x.shape == (100, 3, 32, 32)
    assert train.x.dtype == torch.uint8
    assert torch.equal(torch.bincount(train.y), torch.full((100,), 2))
    assert train.y.tolist() == sorted(train.y.tolist())  # class folders in sorted name order
    # brighter classes have larger labels (the writer's offset): labels follow the folder names
    assert train.x[train.y == 99].float().mean() > train.x[train.y == 0].float().mean() + 100
    assert (data_dir / "miniImageNet100" / "cache_train.pt").exists()
    again = MiniImageNet(root=data_dir).load(train=True)  # from the cache
    assert torch.equal(again.x, train.x) and torch.equal(again.y, train.y)


def test_missing_mini_imagenet_is_one_line_naming_the_layout(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        MiniImageNet(root=tmp_path / "nothing").load(train=True)
    message = str(err.value)
    assert "\n" not in message
    assert "miniImageNet100/ with train/<class>/*.jpg and validation/<class>/*.jpg" in message
    assert not (tmp_path / "nothing").exists()


def test_resnet18_cldst_is_the_released_network():
    model = create_model("resnet18_cldst", num_classes=100, in_chans=3, image_size=32)
    stem = model.conv1
    assert (stem.kernel_size, stem.stride, stem.padding) == ((7, 7), (2, 2), (3, 3))
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 20 and all(not n.affine and not n.track_running_stats for n in norms)
    assert model.fc.bias is None and model.fc.out_features == 100
    # only conv and linear weights: a per-task mask covers every parameter
    weights = {id(m.weight) for m in prunable_layers(model).values()}
    assert all(id(p) in weights for p in model.parameters())
    model.eval()  # batch statistics at test time too: a prediction depends on its batch
    x = torch.randn(4, 3, 32, 32)
    assert not torch.allclose(model(x)[:2], model(x[:2]))
    # the CIFAR ResNet-18 is unchanged
    cifar = create_model("resnet18_cifar", num_classes=100, in_chans=3, image_size=32)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.fc.bias is not None and cifar.bn1.affine
    assert sum(p.numel() for p in cifar.parameters()) == 11_220_132
