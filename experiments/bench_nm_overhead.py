"""Cost of N:M sparsity (SR-STE) against the same model dense, side by side in one run.

Two models, each in two copies trained on the same batches, steps interleaved in a rotating order:

- mlp: 784-512-512-10 (MNIST-sized), both hidden layers 1:8 SR-STE, batch 128, AdamW;
- vit: ViT-Tiny at 32x32 with patch 4 (the PGF/SR-STE preset), MLP blocks 1:32 SR-STE, AdamW.

Per model: median training-step time nm/dense, the time of 4 evaluation forwards after a step
nm/dense (the mask is cached per weight version: the first forward after a step computes it, the
others reuse it), and the step ratio with gradient accumulation over 2 micro-batches. Process
CPU time and wall clock. ``--cpu-allocator`` (default ``retain``, as ``python train.py``) sets how
freed CPU memory is handled for the whole process (``sparseforge.utils.allocator``); ``system``
measures with the C library's defaults.

    python experiments/bench_nm_overhead.py                       # both models
    python experiments/bench_nm_overhead.py --models mlp --steps 30 --threads 2

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sparseforge.models import create_model  # noqa: E402
from sparseforge.sparsity.nm import NMSchedule, NMSparsifier  # noqa: E402
from sparseforge.utils.allocator import CPU_ALLOCATOR, configure_cpu_allocator  # noqa: E402

MODELS = {
    # name: (create_model kwargs, input shape, batch, N:M, include)
    "mlp": (
        {"name": "mlp", "in_chans": 1, "image_size": 28, "hidden_sizes": [512, 512]},
        (1, 28, 28),
        128,
        (1, 8),
        ["features.1", "features.3"],
    ),
    "vit": (
        {"name": "vit_tiny_patch16_224", "in_chans": 3, "image_size": 32, "img_size": 32, "patch_size": 4},
        (3, 32, 32),
        32,
        (1, 32),
        ["blocks.*.mlp.fc1", "blocks.*.mlp.fc2"],
    ),
}


def build(model_name: str, nm: bool):
    kwargs, _, _, (n, m), include = MODELS[model_name]
    torch.manual_seed(0)
    kwargs = dict(kwargs)
    name = kwargs.pop("name")
    model = create_model(name, num_classes=10, **kwargs)
    sparsifier = None
    if nm:
        sparsifier = NMSparsifier(model, NMSchedule(n=n, m=m, mode="srste"), include=include)
        sparsifier.set_position(1, 2)  # past any warm-up: the binary N:M mask with SR-STE
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    return model, optimizer


def clocks() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def since(start: tuple[float, float]) -> tuple[float, float]:
    cpu, wall = clocks()
    return cpu - start[0], wall - start[1]


def train_step(model, optimizer, batches) -> tuple[float, float]:
    start = clocks()
    optimizer.zero_grad(set_to_none=True)
    for x, y in batches:  # one batch, or micro-batches of an accumulated step
        (F.cross_entropy(model(x), y) / len(batches)).backward()
    optimizer.step()
    return since(start)


@torch.no_grad()
def eval_forward(model, x, batches: int = 4) -> tuple[float, float]:
    """``batches`` evaluation forwards (an evaluation loop between two optimizer steps)."""
    model.eval()
    start = clocks()
    for _ in range(batches):
        model(x)
    out = since(start)
    model.train()
    return out


def measure(model_name: str, steps: int, warmup: int) -> dict:
    _, shape, batch, pattern, _ = MODELS[model_name]
    arms = {"dense": build(model_name, False), "nm": build(model_name, True)}
    g = torch.Generator().manual_seed(1)
    times = {kind: {arm: [] for arm in arms} for kind in ("step", "eval", "accum2")}
    for i in range(warmup + steps):
        x, y = torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g)
        order = list(arms) if i % 2 else list(reversed(arms))
        for arm in order:
            step = train_step(*arms[arm], [(x, y)])
            ev = eval_forward(arms[arm][0], x)
            acc = train_step(*arms[arm], [(x[: batch // 2], y[: batch // 2]), (x[batch // 2 :], y[batch // 2 :])])
            if i >= warmup:
                times["step"][arm].append(step)
                times["eval"][arm].append(ev)
                times["accum2"][arm].append(acc)
    out: dict = {"batch": batch, "pattern": f"{pattern[0]}:{pattern[1]}", "steps": steps}
    for kind, per_arm in times.items():
        for clock, index in (("cpu", 0), ("wall", 1)):
            ratios = [n[index] / d[index] for n, d in zip(per_arm["nm"], per_arm["dense"], strict=True)]
            out[f"{kind}_nm_over_dense_{clock}"] = statistics.median(ratios)
        out[f"{kind}_dense_ms_cpu"] = statistics.median(t[0] for t in per_arm["dense"]) * 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cpu-allocator", default="retain", choices=CPU_ALLOCATOR)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configure_cpu_allocator(args.cpu_allocator)
    result = {"threads": args.threads, "cpu_allocator": args.cpu_allocator, "torch": torch.__version__, "models": {}}
    for name in args.models:
        r = measure(name, args.steps, args.warmup)
        result["models"][name] = r
        print(
            f"{name} {r['pattern']} SR-STE: step nm/dense {r['step_nm_over_dense_cpu']:.3f} (cpu) "
            f"{r['step_nm_over_dense_wall']:.3f} (wall); eval {r['eval_nm_over_dense_cpu']:.3f}; "
            f"2 micro-batches {r['accum2_nm_over_dense_cpu']:.3f}",
            flush=True,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
