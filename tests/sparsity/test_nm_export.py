"""Export: hard-masked plain weights round-trip exactly; real 2:4 tensors on a GPU (skipped on CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseforge.sparsity.nm import NMSchedule, NMSparsifier, nm_layers
from sparseforge.sparsity.nm.export import (
    bake_,
    export_state,
    ineligible_reason,
    load_export,
    min_tile,
    semi_structured_unsupported_reason,
    to_semi_structured,
)
from sparseforge.sparsity.nm.mask import group_counts, satisfies_2to4

NO_GPU = semi_structured_unsupported_reason()


def mlp(width: int = 128) -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, width), nn.GELU(), nn.Linear(width, 64), nn.GELU(), nn.Linear(64, 10))


def trained(mode: str, n: int, m: int, seed: int = 0, **schedule) -> tuple[nn.Module, NMSparsifier]:
    torch.manual_seed(seed)
    model = mlp()
    sp = NMSparsifier(model, NMSchedule(n=n, m=m, mode=mode, **schedule), include=["0", "2"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    for t in range(6):
        sp.set_position(t, 10)  # stops mid-schedule on purpose: MdGf alpha > 0, SdGf in an early stage
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return model, sp


@pytest.mark.parametrize("mode", ["srste", "mdgf", "sdgf", "ste"])
def test_export_round_trip_is_exact_and_leaves_the_model_alone(mode):
    model, sp = trained(mode, 1, 8)
    x = torch.randn(16, 64)
    model.eval()
    expected = model(x)
    state = export_state(model, {"note": "test"})
    assert torch.equal(model(x), expected)  # export does not touch the training model
    assert nm_layers(model).keys() == {"0", "2"}

    plain = mlp()
    masks = load_export(state, plain)
    assert torch.equal(plain.eval()(x), expected)  # bit-exact: the same masked weights
    phase = sp.phase(hard=True)
    assert set(masks) == {"0", "2"} and set(state["patterns"].values()) == {phase.pattern}
    for name, mask in masks.items():
        assert bool((group_counts(mask, phase.m) == phase.n).all())
        assert torch.equal(dict(plain.named_modules())[name].weight != 0, mask)
    assert "parametrizations" not in " ".join(state["state_dict"])


def test_export_of_mdgf_is_binary_even_mid_decay():
    model, sp = trained("mdgf", 1, 8, decay="linear")
    assert 0.0 < sp.phase().alpha < 1.0
    plain = mlp()
    load_export(export_state(model), plain)
    assert bool((group_counts(plain[0].weight, 8) == 1).all())


def test_bake_in_place_matches_the_export():
    model, _ = trained("srste", 2, 4)
    state = export_state(model)
    masks = bake_(model)
    assert not nm_layers(model)
    for key, value in state["state_dict"].items():
        assert torch.equal(model.state_dict()[key], value), key
    assert masks.keys() == state["masks"].keys()


def test_load_export_refuses_weights_outside_their_mask():
    model, _ = trained("ste", 1, 4)
    state = export_state(model)
    state["state_dict"]["0.weight"] = torch.ones_like(state["state_dict"]["0.weight"])
    with pytest.raises(ValueError, match="nonzeros outside its mask"):
        load_export(state, mlp())


def test_2to4_eligibility_reasons():
    lin = nn.Linear(128, 64)
    w = lin.weight.detach()
    assert (
        ineligible_reason(lin, w, torch.float16, "cusparselt")
        == "the weight is not 2:4 along in_features (pattern with more than 2 nonzeros in an aligned group of 4)"
    )
    from sparseforge.sparsity.nm import nm_mask

    masked = (w * nm_mask(w, 1, 8)).half()
    assert satisfies_2to4(masked)
    assert ineligible_reason(lin, masked, torch.float16, "cusparselt") is None
    assert "float16 or bfloat16" in ineligible_reason(lin, masked.float(), torch.float32, "cusparselt")
    small = nn.Linear(64, 24)  # 24 rows: not a multiple of CUTLASS's 32
    sw = (small.weight * nm_mask(small.weight, 2, 4)).detach().half()
    assert "tile 32x64" in ineligible_reason(small, sw, torch.float16, "cutlass")
    conv = nn.Conv2d(8, 8, 3)
    assert "no semi-structured path for convolutions" in ineligible_reason(conv, conv.weight, torch.float16, "cutlass")
    assert min_tile(torch.float16, "cusparselt") == (16, 16) and min_tile(torch.float16, "cutlass") == (32, 64)


@pytest.mark.skipif(NO_GPU is None, reason="this test checks the CPU message; a capable GPU is present")
def test_semi_structured_conversion_on_cpu_is_one_clear_message():
    model, _ = trained("srste", 2, 4)
    bake_(model)
    with pytest.raises(RuntimeError, match="no CUDA GPU: semi-structured"):
        to_semi_structured(model, ["0", "2"])


@pytest.mark.gpu
@pytest.mark.skipif(
    NO_GPU is not None, reason=f"real 2:4 tensors need a CUDA GPU of compute capability >= 8.0: {NO_GPU}"
)
@pytest.mark.parametrize("pattern", [(2, 4), (1, 8)])
def test_semi_structured_round_trip_on_gpu(pattern):
    model, _ = trained("srste", *pattern)
    bake_(model)
    dense = model.half().cuda().eval()
    baked = {name: dict(dense.named_modules())[name].weight.detach().clone() for name in ("0", "2")}
    x = torch.randn(256, 64, device="cuda", dtype=torch.float16)
    expected = dense(x)
    report = to_semi_structured(dense, ["0", "2"])
    assert report == {"0": "converted", "2": "converted"}
    for name, weight in baked.items():
        sparse = dict(dense.named_modules())[name].weight
        assert type(sparse).__name__.startswith("SparseSemiStructuredTensor")
        assert torch.equal(sparse.to_dense(), weight)  # compression is lossless
    assert torch.allclose(dense(x), expected, atol=2e-2, rtol=2e-2)


@pytest.mark.e2e  # a CLI subprocess
def test_check_script_validates_masks_and_kernel_shapes(tmp_path):
    import json
    import subprocess
    import sys

    from tests.helpers.cli import REPO

    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "check_nm_export.py"), "--tokens", "64", "--repeats", "1", "--blocks", "1", "--patterns", "1:8", "4:8"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    one_eight, four_eight = figures["results"]
    assert one_eight["all_2to4"] and all(v["cusparselt_fp16"] == "eligible" for v in one_eight["layers"].values())
    assert not four_eight["all_2to4"]  # 4:8 can put 4 nonzeros in an aligned group of 4
    if NO_GPU is None:
        assert one_eight["to_dense_equal"] and one_eight["speedup"] > 0
    else:
        assert one_eight["speedup"] is None and figures["semi_structured_unavailable_reason"] == NO_GPU
