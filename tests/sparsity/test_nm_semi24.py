"""``semi24``: N:M layers through 2:4 tensors built from the framework's own masks.

The eligibility logic (which masks and shapes make lossless 2:4 tensors) runs on the CPU; the
conversion and the forward need a CUDA GPU of compute capability >= 8.0 and skip with the reason.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseforge.sparsity.nm import NMSchedule, NMSparsifier
from sparseforge.sparsity.nm.export import semi_structured_unsupported_reason
from sparseforge.sparsity.nm.mask import group_counts
from sparseforge.sparsity.nm.semi24 import install, semi24_unsupported_reason, uninstall
from sparseforge.sparsity.nm.sparsifier import dense_weight, nm_parametrization

NO_GPU = semi_structured_unsupported_reason()


def model_with(n: int, m: int, width: int = 128, mode: str = "srste") -> tuple[nn.Module, NMSparsifier]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, width), nn.GELU(), nn.Linear(width, 128))
    sp = NMSparsifier(model, NMSchedule(n=n, m=m, mode=mode), include=["0", "2"])
    sp.set_position(1, 2)
    return model, sp


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (1, 8), (1, 32), (2, 8)])
def test_masks_that_are_2to4_along_in_features_are_eligible(n, m):
    model, _ = model_with(n, m)
    for name in ("0", "2"):
        layer = model.get_submodule(name)
        assert semi24_unsupported_reason(layer, torch.float16, "cutlass") is None
        effective = layer.weight.detach()
        assert bool((group_counts(effective, 4) <= 2).all())  # the framework's mask, read as 2:4


@pytest.mark.parametrize("n,m", [(3, 4), (4, 8)])
def test_other_patterns_are_refused_with_the_reason(n, m):
    model, _ = model_with(n, m)
    assert "not 2:4 along in_features" in semi24_unsupported_reason(model[0], torch.float16, "cutlass")


def test_dtype_shape_and_phase_are_checked():
    model, sp = model_with(2, 4)
    assert "float16 or bfloat16" in semi24_unsupported_reason(model[0], torch.float32, "cutlass")
    rows_ok, _ = model_with(2, 4, width=96)  # fc1: 96 rows, a multiple of CUTLASS's 32-row fp16 tile
    assert semi24_unsupported_reason(rows_ok[0], torch.float16, "cutlass") is None
    narrow, _ = model_with(2, 4, width=80)  # fc2: in_features 80, not a multiple of its 64 columns
    assert "tile" in semi24_unsupported_reason(narrow[2], torch.float16, "cutlass")
    assert semi24_unsupported_reason(nn.Linear(128, 128), torch.float16, "cutlass") == "not an N:M layer"
    torch.manual_seed(0)
    warm = nn.Sequential(nn.Linear(128, 128))
    warm_sp = NMSparsifier(warm, NMSchedule(n=2, m=4, mode="srste", dense_fraction=0.5), include=["0"])
    warm_sp.set_position(0, 10)  # inside the dense warm-up: no mask to build a 2:4 tensor from
    assert semi24_unsupported_reason(warm[0], torch.float16, "cutlass") == "the layer is in its dense phase"
    warm_sp.set_position(6, 10)
    assert semi24_unsupported_reason(warm[0], torch.float16, "cutlass") is None


@pytest.mark.skipif(NO_GPU is None, reason="this test checks the CPU message; a capable GPU is present")
def test_install_on_a_cpu_says_why_in_one_line():
    model, _ = model_with(2, 4)
    with pytest.raises(RuntimeError, match="no CUDA GPU: semi-structured"):
        install(model, ["0", "2"])


@pytest.mark.gpu
@pytest.mark.skipif(NO_GPU is not None, reason=f"2:4 tensors need a CUDA GPU of compute capability >= 8.0: {NO_GPU}")
@pytest.mark.parametrize("n,m", [(2, 4), (1, 8)])
def test_semi24_forward_and_gradients_match_the_masked_dense_layer_on_gpu(n, m):
    model, sp = model_with(n, m)
    model = model.cuda()
    reference, _ = model_with(n, m)
    reference = reference.cuda()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(256, 128, device="cuda", dtype=torch.float16)
    report = install(model, ["0", "2"])
    assert report == {"0": "semi24", "2": "semi24"}
    with torch.autocast("cuda", dtype=torch.float16):
        y, y_ref = model(x), reference(x)
    torch.testing.assert_close(y.float(), y_ref.float(), atol=2e-2, rtol=2e-2)
    y.float().sum().backward()
    y_ref.float().sum().backward()
    for name in ("0", "2"):
        got = dense_weight(model.get_submodule(name)).grad
        want = dense_weight(reference.get_submodule(name)).grad
        torch.testing.assert_close(got, want, atol=5e-2, rtol=5e-2)
        forward = model.get_submodule(name).forward
        sparse = forward._sparse
        assert torch.equal(sparse.to_dense(), model.get_submodule(name).weight.detach().half())  # lossless
        assert nm_parametrization(model.get_submodule(name)) is not None
    uninstall(model)
