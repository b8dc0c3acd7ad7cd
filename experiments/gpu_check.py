"""GPU figures for sparse execution, in one run of under 3 minutes (CUDA, compute capability >= 8.0).

1. Masked-path overhead: a training step of the 784-4096-4096-10 MLP (batch 256) and of ViT-Tiny
   (patch 4, 32x32, batch 128; MLP blocks sparse), dense vs static masks (ERK 0.1), fp32 and
   bf16 autocast. Goal: <= 1.05x.
2. N:M ``semi24`` executor on ViT-B and ViT-L MLP shapes (fc1 and fc2, 8192 tokens, fp16): the
   forward and forward+backward of an N:M Linear (2:4 and 1:8 masks from ``nm_mask``) through
   2:4 tensors vs the same masked layer dense.
3. ``nm/export.py`` timed check: the baked model's Linear layers converted by
   ``to_semi_structured``, inference forward vs dense fp16, outputs compared.

Every timing is the median of ``--repeats`` CUDA-event-timed runs after warm-up, arms interleaved.
On a machine without a capable GPU it prints the reason and exits 0. Last stdout line: JSON.

    python experiments/gpu_check.py            # ~2 min on an H100
    python experiments/gpu_check.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sparseforge.models import create_model  # noqa: E402
from sparseforge.sparsity import Sparsifier  # noqa: E402
from sparseforge.sparsity.nm import NMSchedule, NMSparsifier  # noqa: E402
from sparseforge.sparsity.nm.export import bake_, semi_structured_unsupported_reason, to_semi_structured  # noqa: E402
from sparseforge.sparsity.nm.semi24 import install  # noqa: E402

SHAPES = {"vit_b": (768, 3072), "vit_l": (1024, 4096)}


def cuda_ms(fn, repeats: int) -> list[float]:
    for _ in range(3):
        fn()
    out = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        out.append(start.elapsed_time(end))
    return out


def interleaved(arms: dict, repeats: int) -> dict[str, float]:
    samples = {k: [] for k in arms}
    for i in range(repeats):
        for k in list(arms) if i % 2 else list(reversed(arms)):
            samples[k] += cuda_ms(arms[k], 1)
    return {k: statistics.median(v) for k, v in samples.items()}


def masked_overhead(repeats: int) -> dict:
    out = {}
    cases = {
        "mlp_784_4096_4096_10_b256": (lambda: create_model("mlp", num_classes=10, in_chans=1, image_size=28, hidden_sizes=[4096, 4096]), (256, 1, 28, 28), None),
        "vit_tiny_p4_32_b128": (lambda: create_model("vit_tiny_patch16_224", num_classes=10, in_chans=3, image_size=32, img_size=32, patch_size=4), (128, 3, 32, 32), ["blocks.*.mlp.fc*"]),
    }  # fmt: skip
    for name, (make, shape, include) in cases.items():
        for precision in ("fp32", "bf16"):
            arms = {}
            for variant in ("dense", "static"):
                torch.manual_seed(0)
                model = make().cuda()
                opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
                sp = None
                if variant == "static":
                    sp = Sparsifier(model, opt, density=0.1, update_rule="static", include=include, account_flops=False)
                    sp.follow_weights()
                x = torch.randn(*shape, device="cuda")
                y = torch.randint(0, 10, (shape[0],), device="cuda")

                def step(model=model, opt=opt, sp=sp, x=x, y=y, bf16=precision == "bf16"):
                    opt.zero_grad(set_to_none=True)
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                        loss = F.cross_entropy(model(x), y)
                    loss.backward()
                    if sp is not None:
                        sp.before_optimizer_step()
                    opt.step()
                    if sp is not None:
                        sp.after_optimizer_step()

                arms[variant] = step
            t = interleaved(arms, repeats)
            out[f"{name}_{precision}"] = {
                "dense_ms": t["dense"],
                "static_ms": t["static"],
                "static_over_dense": t["static"] / t["dense"],
            }
    return out


def nm_layer(in_f: int, out_f: int, n: int, m: int) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(in_f, out_f)).cuda()
    sp = NMSparsifier(model, NMSchedule(n=n, m=m, mode="srste"), include=["0"])
    sp.set_position(1, 2)
    return model


def _fwd(model, x):
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        return model(x)


def _fwd_bwd(model, x):
    with torch.autocast("cuda", dtype=torch.float16):
        model(x).float().sum().backward()


def semi24_executor(repeats: int, tokens: int) -> dict:
    out = {}
    for shape_name, (d, hidden) in SHAPES.items():
        for layer_name, (in_f, out_f) in {"fc1": (d, hidden), "fc2": (hidden, d)}.items():
            for n, m in ((2, 4), (1, 8)):
                dense, sparse = nm_layer(in_f, out_f, n, m), nm_layer(in_f, out_f, n, m)
                report = install(sparse, ["0"])
                x = torch.randn(tokens, in_f, device="cuda", dtype=torch.float16, requires_grad=True)

                t_f = interleaved({"dense": partial(_fwd, dense, x), "semi24": partial(_fwd, sparse, x)}, repeats)
                t_fb = interleaved(
                    {"dense": partial(_fwd_bwd, dense, x), "semi24": partial(_fwd_bwd, sparse, x)}, repeats
                )
                diff = float((_fwd(dense, x).float() - _fwd(sparse, x).float()).abs().max())
                out[f"{shape_name}_{layer_name}_{n}:{m}"] = {
                    "status": report["0"],
                    "forward_speedup": t_f["dense"] / t_f["semi24"],
                    "fwd_bwd_speedup": t_fb["dense"] / t_fb["semi24"],
                    "dense_forward_ms": t_f["dense"],
                    "max_abs_diff": diff,
                }
    return out


def export_check(repeats: int, tokens: int) -> dict:
    out = {}
    for shape_name, (d, hidden) in SHAPES.items():
        for n, m in ((2, 4), (1, 8)):
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
            sp = NMSparsifier(model, NMSchedule(n=n, m=m, mode="srste"), include=["0", "2"])
            sp.set_position(1, 2)
            bake_(model)
            dense = model.half().cuda().eval()
            x = torch.randn(tokens, d, device="cuda", dtype=torch.float16)
            with torch.no_grad():
                expected = dense(x)
                sparse = copy.deepcopy(dense)
                report = to_semi_structured(sparse, ["0", "2"])
                t = interleaved({"dense": partial(dense, x), "sparse": partial(sparse, x)}, repeats)
                diff = float((sparse(x) - expected).abs().max())
            out[f"{shape_name}_{n}:{m}"] = {
                "report": report,
                "speedup": t["dense"] / t["sparse"],
                "dense_ms": t["dense"],
                "max_abs_diff": diff,
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tokens", type=int, default=8192)
    args = parser.parse_args()
    reason = semi_structured_unsupported_reason()
    result: dict = {"torch": torch.__version__}
    if reason is not None:
        result["skipped"] = reason
        print(f"gpu_check: not measured here: {reason}")
        print(json.dumps(result))
        return
    repeats = 5 if args.quick else 15
    result["device"] = torch.cuda.get_device_name()
    start = time.perf_counter()
    for part, fn in (
        ("masked_overhead", lambda: masked_overhead(repeats)),
        ("semi24", lambda: semi24_executor(repeats, args.tokens)),
        ("nm_export", lambda: export_check(repeats, args.tokens)),
    ):
        try:
            result[part] = fn()
        except Exception as exc:  # report every part even if one fails on this card
            result[part] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"{part}: done at {time.perf_counter() - start:.0f} s", flush=True)
    result["seconds"] = time.perf_counter() - start
    print(json.dumps(result))


if __name__ == "__main__":
    main()
