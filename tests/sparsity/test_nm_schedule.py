"""N:M schedules: pure functions of (clock, total); endpoints and stage boundaries exact."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.sparsity.nm.schedule import NMSchedule, densify_stages, geometric_stages, stepwise_stages


@pytest.mark.parametrize("decay", ["linear", "exponential", "staircase"])
@pytest.mark.parametrize("dense_fraction,end_fraction,total", [(0.0, 1.0, 100), (0.1, 0.8, 1000), (0.25, 0.5, 37)])
def test_mask_decay_hits_its_endpoints_exactly(decay, dense_fraction, end_fraction, total):
    s = NMSchedule(n=1, m=8, mode="mdgf", decay=decay, dense_fraction=dense_fraction, decay_end_fraction=end_fraction)
    d, e = math.floor(dense_fraction * total), math.floor(end_fraction * total)
    assert s.dense_end(total) == d and s.decay_end(total) == e
    assert all(s.phase(t, total).dense for t in range(d))
    assert s.alpha(d, total) == 1.0  # exactly 1 where the decay starts
    assert s.alpha(e, total) == 0.0  # exactly 0 where it ends, and binary from there on
    assert all(s.phase(t, total).binary for t in range(e, total + 5))
    alphas = [s.alpha(t, total) for t in range(d, e + 1)]
    assert all(a >= b for a, b in zip(alphas, alphas[1:], strict=False))  # monotone non-increasing
    assert all(0.0 < a <= 1.0 for a in alphas[:-1])  # soft (nonzero) strictly before the end


def test_linear_decay_values():
    s = NMSchedule(n=1, m=8, mode="mdgf", decay="linear")
    assert [s.alpha(t, 10) for t in range(11)] == pytest.approx([1 - t / 10 for t in range(11)])


def test_exponential_decay_values_and_paper_coefficient():
    s = NMSchedule(n=1, m=8, mode="mdgf", decay="exponential", decay_rate=10.0)
    assert s.alpha(50, 100) == pytest.approx(math.exp(-5.0))
    paper = NMSchedule(n=1, m=32, mode="mdgf", decay="exponential", decay_coef_per_step=1e-4)
    # reference notes: kappa = 1e-4 gives alpha 0.90 at 1k steps, 0.37 at 10k, 0.10 at 23k
    total = 109_200  # 350 epochs x 312 steps (ImageNet at batch 4096)
    assert paper.alpha(1_000, total) == pytest.approx(0.905, abs=1e-3)
    assert paper.alpha(10_000, total) == pytest.approx(0.368, abs=1e-3)
    assert paper.alpha(23_000, total) == pytest.approx(0.100, abs=1e-3)
    assert paper.alpha(total, total) == 0.0


def test_staircase_decay_levels():
    s = NMSchedule(n=1, m=8, mode="mdgf", decay="staircase", decay_levels=4)
    assert [s.alpha(t, 8) for t in range(9)] == [1.0, 1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25, 0.0]


def test_the_official_step_offset_bug_is_not_repeated():
    # official train.py subtracts dense_steps * total / 100: alpha would already have decayed at sparse start
    s = NMSchedule(n=1, m=8, mode="mdgf", dense_fraction=0.2, decay="exponential", decay_coef_per_step=1e-2)
    assert s.alpha(200, 1000) == 1.0
    assert s.alpha(300, 1000) == pytest.approx(math.exp(-1.0))


def test_stepwise_and_geometric_chains():
    assert stepwise_stages(1, 8) == [(7, 8), (4, 8), (2, 8), (1, 8)]
    assert stepwise_stages(1, 16) == [(15, 16), (8, 16), (4, 16), (2, 16), (1, 16)]
    assert stepwise_stages(1, 32) == [(31, 32), (16, 32), (8, 32), (4, 32), (2, 32), (1, 32)]
    assert stepwise_stages(2, 4) == [(3, 4), (2, 4)]
    assert stepwise_stages(3, 8) == [(7, 8), (4, 8), (3, 8)]  # reaches the target (the official code does not)
    assert geometric_stages(1, 8) == [(8, 64), (4, 32), (2, 16), (1, 8)]
    assert geometric_stages(1, 32) == [(8, 256), (4, 128), (2, 64), (1, 32)]
    assert NMSchedule(n=1, m=32, mode="sdgf", structure="geometric").largest_group == 256
    assert NMSchedule(n=1, m=32, mode="sdgf", structure="stepwise").largest_group == 32


def test_densify_is_pgfs_chain_and_frames():
    assert densify_stages(1, 4) == [(1, 32), (1, 16), (1, 8), (1, 4)]
    assert densify_stages(2, 8) == [(2, 64), (2, 32), (2, 16), (2, 8)]
    s = NMSchedule(n=2, m=4, mode="sdgf", structure="densify", dense_fraction=0.1, finetune_fraction=0.1)
    assert s.largest_group == 32
    # PGF get_decay_config('densify'): frame i starts at int(dense + i * (total - dense - ft) / 4)
    # with pattern N:(M * 2^(3 - i)); here 350 epochs, 35 dense, 35 fine-tune
    frame = (350 - 35 - 35) / 4
    assert s.stage_starts(350) == [int(35 + i * frame) for i in range(4)]
    assert [s.phase(t, 350).pattern for t in s.stage_starts(350)] == ["2:32", "2:16", "2:8", "2:4"]
    assert [s.phase(t, 350).density for t in s.stage_starts(350)] == [2 / 32, 2 / 16, 2 / 8, 2 / 4]


def test_sdgf_stage_boundaries_worked_example():
    # reference §2.5: T = 350 epochs, dense 35, fine-tune 35, stepwise 1:8 -> stages at 35, 105, 175, 245
    s = NMSchedule(n=1, m=8, mode="sdgf", dense_fraction=0.1, finetune_fraction=0.1)
    assert s.stage_starts(350) == [35, 105, 175, 245]
    patterns = {t: s.phase(t, 350).pattern for t in (0, 34, 35, 104, 105, 174, 175, 244, 245, 314, 315, 349)}
    assert patterns == {
        0: "dense", 34: "dense", 35: "7:8", 104: "7:8", 105: "4:8", 174: "4:8",
        175: "2:8", 244: "2:8", 245: "1:8", 314: "1:8", 315: "1:8", 349: "1:8",
    }  # fmt: skip


@settings(max_examples=80, deadline=None)
@given(
    total=st.integers(1, 5000),
    dense=st.floats(0.0, 0.5),
    finetune=st.floats(0.0, 0.45),
    structure=st.sampled_from(["stepwise", "geometric", "densify"]),
    nm=st.sampled_from([(1, 4), (2, 4), (1, 8), (1, 16), (1, 32)]),
)
def test_sdgf_stages_are_equal_and_fill_the_span(total, dense, finetune, structure, nm):
    n, m = nm
    s = NMSchedule(n=n, m=m, mode="sdgf", structure=structure, dense_fraction=dense, finetune_fraction=finetune)
    starts = s.stage_starts(total)
    d, f = math.floor(dense * total + 1e-9), math.floor(finetune * total + 1e-9)
    assert starts[0] == d
    assert starts == sorted(starts)
    lengths = [b - a for a, b in zip(starts, [*starts[1:], total - f], strict=True)]
    assert max(lengths) - min(lengths) <= 1  # equal stages up to rounding
    # every step is in exactly the stage its boundaries say; the target holds from the last boundary on
    for t in {0, d, *starts, total - f, total - 1}:
        if 0 <= t < total:
            phase = s.phase(t, total)
            if t < d:
                assert phase.dense
            else:
                stage = max(i for i, b in enumerate(starts) if b <= t)
                assert (phase.n, phase.m) == s.stages[stage] and phase.binary
    if starts[-1] < total:
        assert s.phase(total - 1, total).pattern == f"{n}:{m}"


def test_phase_is_a_pure_function_of_the_position():
    s = NMSchedule(n=1, m=16, mode="sdgf", dense_fraction=0.1)
    forward = [s.phase(t, 200) for t in range(200)]
    backward = [s.phase(t, 200) for t in reversed(range(200))][::-1]
    assert forward == backward  # no hidden state: a resume at any step sees the same phase


def test_hard_phase_is_binary_even_mid_decay():
    s = NMSchedule(n=1, m=8, mode="mdgf", decay="linear")
    assert s.phase(5, 10).alpha == pytest.approx(0.5)
    assert s.phase(5, 10, hard=True).alpha == 0.0


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"n": 4, "m": 4}, "n"),
        ({"n": 0, "m": 4}, "n"),
        ({"mode": "rigl"}, "mode"),
        ({"dense_fraction": 1.0}, "dense_fraction"),
        ({"mode": "mdgf", "decay": "cosine"}, "mdgf.decay"),
        ({"mode": "mdgf", "dense_fraction": 0.5, "decay_end_fraction": 0.4}, "mdgf.end_fraction"),
        ({"decay": "staircase", "decay_coef_per_step": 1e-4}, "mdgf.coef_per_step"),
        ({"mode": "sdgf", "structure": "custom"}, "sdgf.structure"),
        ({"dense_fraction": 0.6, "finetune_fraction": 0.5}, "sdgf.finetune_fraction"),
        ({"srste_lambda": -1.0}, "srste.lambda_w"),
    ],
)
def test_bad_values_name_the_option(kwargs, key):
    with pytest.raises(ValueError, match=f"^{key}: "):
        NMSchedule(**kwargs)
