"""Check the real 2:4 export: outputs against the masked dense model, kernel constraints, speed.

Two sources of a model:

- ``--run DIR``: a finished N:M run (``DIR/nm_export.pt`` + ``DIR/summary.json``). The model is
  rebuilt from the run's config; the training-time N:M model (parametrizations, restored from
  ``DIR/checkpoints/last.ckpt``) is compared with the exported plain model (must be bit-exact).
- default: ViT-B/16-sized MLP blocks (768 -> 3072 -> 768, as in the PGF ViT recipe) with random
  weights and N:M masks for each ``--patterns`` entry (default 2:4 and 1:8).

Then, per model:

- CPU (no 2:4 kernels): validates that every N:M weight is 2:4 along in_features and that its
  shape meets the cuSPARSELt and CUTLASS fp16 tile constraints, and times the masked dense forward.
- CUDA (compute capability >= 8.0): converts the eligible linears with
  ``torch.sparse.to_sparse_semi_structured`` (fp16), checks ``to_dense()`` equals the masked
  weight, compares outputs with the fp16 masked dense model, and times both, interleaved
  (median of --repeats), reporting the speedup.

The LAST stdout line is one JSON object with every figure.

    python experiments/check_nm_export.py                       # synthetic ViT-B MLP, 2:4 and 1:8
    python experiments/check_nm_export.py --tokens 16384 --patterns 2:4 1:8 1:32
    python experiments/check_nm_export.py --run outputs/<run>   # a trained model
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from sparseforge.sparsity.nm import NMSchedule, NMSparsifier
from sparseforge.sparsity.nm.export import (
    default_backend,
    export_state,
    ineligible_reason,
    load_export,
    semi_structured_unsupported_reason,
    to_semi_structured,
)
from sparseforge.sparsity.nm.mask import satisfies_2to4


def synthetic(pattern: str, blocks: int, seed: int) -> tuple[nn.Module, dict]:
    """ViT-B-sized MLP blocks (fc1 768->3072, fc2 3072->768) with N:M masks, and their export."""
    n, m = map(int, pattern.split(":"))
    torch.manual_seed(seed)
    model = nn.Sequential(
        *[nn.Sequential(nn.Linear(768, 3072), nn.GELU(), nn.Linear(3072, 768)) for _ in range(blocks)]
    )
    sparsifier = NMSparsifier(model, NMSchedule(n=n, m=m, mode="srste"), include=["*.0", "*.2"])
    sparsifier.set_position(1, 1)
    model.eval()
    state = export_state(model)
    plain = nn.Sequential(
        *[nn.Sequential(nn.Linear(768, 3072), nn.GELU(), nn.Linear(3072, 768)) for _ in range(blocks)]
    )
    load_export(state, plain)
    return plain.eval(), state


def from_run(run_dir: Path) -> tuple[nn.Module, dict, nn.Module, tuple[int, ...]]:
    """(exported plain model, export state, training-time N:M model from last.ckpt, input shape)."""
    from hydra.utils import get_class, instantiate
    from omegaconf import OmegaConf

    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = OmegaConf.create(summary["config"])
    dataset = get_class(cfg.dataset._target_)
    dims = {"num_classes": dataset.num_classes, "in_chans": dataset.in_chans, "image_size": dataset.image_size}
    state = torch.load(run_dir / "nm_export.pt", map_location="cpu", weights_only=False)
    plain = instantiate(cfg.model, **dims)
    load_export(state, plain)
    trained = instantiate(cfg.model, **dims)
    callback = instantiate(cfg.sparsity)
    callback.preflight(trained)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    trained.load_state_dict(
        {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    )
    return plain.eval(), state, trained.eval(), (dataset.in_chans, dataset.image_size, dataset.image_size)


def validate(model: nn.Module, state: dict) -> dict:
    """Per N:M layer: 2:4 along in_features, and the fp16 tile constraints of both backends."""
    modules = dict(model.named_modules())
    report = {}
    for name, pattern in state["patterns"].items():
        layer, weight = modules[name], modules[name].weight.detach()
        report[name] = {
            "pattern": pattern,
            "shape": list(weight.shape),
            "is_2to4": satisfies_2to4(weight),
            "cusparselt_fp16": ineligible_reason(layer, weight.half(), torch.float16, "cusparselt") or "eligible",
            "cutlass_fp16": ineligible_reason(layer, weight.half(), torch.float16, "cutlass") or "eligible",
        }
    return report


def timed(fn, x, repeats: int, cuda: bool) -> list[float]:
    out = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(x)
        if cuda:
            torch.cuda.synchronize()
        out.append(time.perf_counter() - start)
    return out


@torch.no_grad()
def check(
    label: str, plain: nn.Module, state: dict, x: torch.Tensor, repeats: int, reference: nn.Module | None
) -> dict:
    result: dict = {"model": label, "layers": validate(plain, state)}
    result["all_2to4"] = all(v["is_2to4"] for v in result["layers"].values())
    if reference is not None:  # the training-time N:M model against its export: must be bit-exact on CPU
        result["export_matches_training_model"] = bool(torch.equal(reference(x), plain(x)))
    reason = semi_structured_unsupported_reason()
    result["semi_structured_unavailable_reason"] = reason
    if reason:
        times = timed(plain, x, repeats, cuda=False)
        result["cpu_masked_dense_ms"] = 1e3 * statistics.median(times)
        result["speedup"] = None
        return result
    dense = plain.half().cuda().eval()
    xh = x.half().cuda()
    expected = dense(xh)
    sparse = __import__("copy").deepcopy(dense)  # a plain model: deep copies are safe here
    names = list(state["patterns"])
    conversion = to_semi_structured(sparse, names, backend=default_backend())
    converted = [n for n, v in conversion.items() if v == "converted"]
    modules_d, modules_s = dict(dense.named_modules()), dict(sparse.named_modules())
    result["conversion"] = conversion
    result["backend"] = default_backend()
    result["to_dense_equal"] = all(torch.equal(modules_s[n].weight.to_dense(), modules_d[n].weight) for n in converted)
    got = sparse(xh)
    result["max_abs_diff"] = float((got - expected).abs().max())
    result["max_abs_ref"] = float(expected.abs().max())
    for _ in range(3):  # warm-up (kernel selection, caches)
        dense(xh), sparse(xh)
    t_dense, t_sparse = [], []
    for _ in range(repeats):  # interleaved, so clock and load drift hit both alike
        t_dense += timed(dense, xh, 1, cuda=True)
        t_sparse += timed(sparse, xh, 1, cuda=True)
    result["dense_fp16_ms"] = 1e3 * statistics.median(t_dense)
    result["sparse_2to4_fp16_ms"] = 1e3 * statistics.median(t_sparse)
    result["speedup"] = result["dense_fp16_ms"] / result["sparse_2to4_fp16_ms"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, default=None, help="a finished N:M run directory")
    parser.add_argument("--patterns", nargs="+", default=["2:4", "1:8"])
    parser.add_argument("--blocks", type=int, default=2, help="synthetic MLP blocks")
    parser.add_argument("--tokens", type=int, default=8192, help="rows of the synthetic input (batch x tokens)")
    parser.add_argument("--batch", type=int, default=256, help="images for --run")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    reason = semi_structured_unsupported_reason()
    if reason:
        print(f"note: real 2:4 tensors cannot be built here ({reason}); validating masks and kernel shapes only")
    results = []
    if args.run is not None:
        plain, state, trained, shape = from_run(args.run)
        x = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(args.seed))
        results.append(check(str(args.run), plain, state, x, args.repeats, trained))
    else:
        x = torch.randn(args.tokens, 768, generator=torch.Generator().manual_seed(args.seed))
        for pattern in args.patterns:
            plain, state = synthetic(pattern, args.blocks, args.seed)
            results.append(check(f"vit_b_mlp x{args.blocks} @ {pattern}", plain, state, x, args.repeats, None))
    for r in results:
        bad = [n for n, v in r["layers"].items() if not v["is_2to4"]]
        line = f"{r['model']}: {len(r['layers'])} N:M layers, 2:4-compatible: {'all' if not bad else 'NOT ' + ', '.join(bad)}"
        if "export_matches_training_model" in r:
            line += f"; export == training-time model: {r['export_matches_training_model']}"
        if r["speedup"] is not None:
            line += (
                f"; fp16 dense {r['dense_fp16_ms']:.3f} ms vs 2:4 {r['sparse_2to4_fp16_ms']:.3f} ms "
                f"-> speedup {r['speedup']:.2f}x (max |diff| {r['max_abs_diff']:.2e})"
            )
        else:
            shapes = {
                v["cusparselt_fp16"] == "eligible" and v["cutlass_fp16"] == "eligible" for v in r["layers"].values()
            }
            line += f"; shapes meet cuSPARSELt and CUTLASS fp16 tiles: {shapes == {True}}"
        print(line)
    print(json.dumps({"semi_structured_unavailable_reason": reason, "results": results}))


if __name__ == "__main__":
    main()
