"""Cost of the sparsity machinery, measured side by side in one run.

For each model three copies train on the same batches, their steps interleaved one by one in a
rotating order. Models: the small CNN and timm's resnet18 (32x32, batch 128, every conv/linear
sparse), the MLP 784-4096-4096-10 (batch 64) and ViT-Tiny (patch 4, 32x32, batch 64) with only
its MLP blocks sparse (``blocks.*.mlp.fc*``). Linear-heavy models are where masking costs show.

- dense: a plain optimizer step (SGD, Nesterov momentum 0.9, weight decay 5e-4);
- static: + ``Sparsifier`` (ERK, density 0.1): mask gradients before the step, weights after;
- rigl: + RigL at ΔT=100: one ΔT period, ending with an update over every layer.

Reported: median step-time ratios (static/dense, rigl regular steps/dense), the RigL update's extra
time over a regular step, RigL amortised over ΔT, the update in units of a dense step, and the
peak-memory ratio sparse/dense (each variant in its own process: peak RSS growth from just before
the model is built to the end of training, an update step included).

    python experiments/bench_sparsity_overhead.py                    # all four models, 100 steps
    python experiments/bench_sparsity_overhead.py --models mlp vit --steps 100 --threads 2

The last stdout line is one JSON object with every figure. Step times are process CPU time
(``--clock cpu``, the default: descheduling on a shared machine does not inflate it) or wall
clock (``--clock wall``). CPU runs use one torch thread by default: on a shared machine more
threads mostly measure contention.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sparseforge.models import create_model  # noqa: E402
from sparseforge.sparsity import Sparsifier  # noqa: E402

DENSITY = 0.1
DELTA_T = 100
MASK_CACHE = True  # sparsity.mask_cache (--no-mask-cache: through the bool masks, no float copies)
DROP_FRACTION = 0.3  # RigL's initial drop fraction: the most expensive update of a run


# name: (create_model arguments, input shape without the batch, default batch, sparse layers or None = all)
MODELS = {
    "small_cnn": ({"name": "small_cnn", "in_chans": 3, "image_size": 32}, (3, 32, 32), 128, None),
    "resnet18": ({"name": "resnet18", "in_chans": 3, "image_size": 32}, (3, 32, 32), 128, None),
    "mlp": (
        {"name": "mlp", "in_chans": 1, "image_size": 28, "hidden_sizes": [4096, 4096]},
        (1, 28, 28),
        64,
        None,
    ),
    "vit": (
        {"name": "vit_tiny_patch16_224", "in_chans": 3, "image_size": 32, "img_size": 32, "patch_size": 4},
        (3, 32, 32),
        64,
        ["blocks.*.mlp.fc1", "blocks.*.mlp.fc2"],
    ),
}
CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
clock = time.process_time


def input_shape(model_name: str) -> tuple[int, ...]:
    return MODELS[model_name][1]


def build(model_name: str, seed: int = 0):
    torch.manual_seed(seed)
    kwargs = dict(MODELS[model_name][0])
    model = create_model(kwargs.pop("name"), num_classes=10, **kwargs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return model, optimizer


def make_sparsifier(variant: str, model, optimizer, total_steps: int, model_name: str):
    if variant == "dense":
        return None
    # FLOPs accounting is part of the machinery a run pays for: keep it on.
    return Sparsifier(
        model,
        optimizer,
        density=DENSITY,
        distribution="erk",
        update_rule=variant,
        delta_t=DELTA_T,
        total_steps=total_steps,
        include=MODELS[model_name][3],
        mask_cache=MASK_CACHE,
    )


def step(model, optimizer, sparsifier, x, y) -> float:
    start = clock()
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    if sparsifier is not None:
        sparsifier.before_optimizer_step()
    optimizer.step()
    if sparsifier is not None:
        sparsifier.after_optimizer_step()
    return clock() - start


def timing(model_name: str, steps: int, batch: int, warmup: int) -> dict:
    variants = ["dense", "static", "rigl"]
    runs = {}
    for v in variants:
        model, optimizer = build(model_name)
        # A schedule long enough that T_end (75%) is after this period's update at step DELTA_T.
        sp = make_sparsifier(v, model, optimizer, total_steps=4 * (warmup + steps), model_name=model_name)
        if sp is not None:
            # a full period: its update lands on the last step; a short run: no update in it (the
            # amortised figure then uses the separately measured update cost only)
            sp.schedule_start = warmup + steps - DELTA_T if steps >= DELTA_T else warmup + steps
        runs[v] = (model, optimizer, sp)
    g = torch.Generator().manual_seed(1)
    times = {v: [] for v in variants}
    for i in range(warmup + steps):
        x, y = torch.randn(batch, *input_shape(model_name), generator=g), torch.randint(0, 10, (batch,), generator=g)
        order = variants[i % 3 :] + variants[: i % 3]  # rotate, so no variant always runs first
        for v in order:
            t = step(*runs[v], x, y)
            if i >= warmup:
                times[v].append(t)
    rigl = runs["rigl"][2]
    full_period = steps >= DELTA_T
    assert rigl.updates_done == int(full_period), rigl.updates_done  # one update in a full period
    update_index = steps - 1 if full_period else steps
    regular_rigl = times["rigl"][:update_index] + times["rigl"][update_index + 1 :]
    update_costs = measure_updates(*runs["rigl"], batch, model_name)
    med = {v: statistics.median(times[v]) for v in variants}
    med["rigl_regular"] = statistics.median(regular_rigl)
    # one sample: a noisy cross-check (none in a short run)
    update_extra = times["rigl"][update_index] - med["rigl_regular"] if full_period else None
    update_cost = statistics.median(update_costs)
    amortised = (med["rigl_regular"] * DELTA_T + update_cost) / DELTA_T
    sums = {v: sum(times[v]) for v in variants}
    n_params = sum(p.numel() for p in runs["dense"][0].parameters())
    return {
        "params": n_params,
        "sparse_weights": sum(runs["static"][2].masks.numel(n) for n in runs["static"][2].masks),
        "median_step_s": med,
        "static_over_dense": med["static"] / med["dense"],
        "rigl_regular_over_dense": med["rigl_regular"] / med["dense"],
        "rigl_update_s": update_costs,
        "rigl_update_in_dense_steps": update_cost / med["dense"],
        "rigl_update_step_extra_in_period_s": update_extra,
        "rigl_amortised_over_dense": amortised / med["dense"],
        "rigl_period_sum_over_dense_sum": sums["rigl"] / sums["dense"],
        "static_sum_over_dense_sum": sums["static"] / sums["dense"],
        "mask_cache_bytes": runs["static"][2].masks.factor_cache_bytes(),
        "steps": steps,
    }


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_updates(model, optimizer, sparsifier, batch: int, model_name: str, repeats: int = 5) -> list[float]:
    """Seconds for one full RigL update over every layer (grow choice from the dense gradient,
    drop, new masks installed with optimizer-state reset, counts and zeros checked)."""
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(batch, *input_shape(model_name), generator=g), torch.randint(0, 10, (batch,), generator=g)
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    grads = {n: sparsifier.masks.weight(n).grad for n in sparsifier.masks}
    costs = []
    for _ in range(repeats):
        start = clock()
        sparsifier.update_now(drop_fraction=DROP_FRACTION, dense_grads=grads, optimizer=optimizer)
        costs.append(clock() - start)
    return costs


def memory_child(model_name: str, variant: str, batch: int) -> None:
    """Peak RSS growth (KiB) from just before the model is built to the end of a few steps with an update.

    The kernel's peak-RSS mark is reset first (``/proc/self/clear_refs``), so what imports and
    data preparation touched earlier does not hide the training peak.
    """
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(batch, *input_shape(model_name), generator=g), torch.randint(0, 10, (batch,), generator=g))
        for _ in range(4)
    ]
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmRSS")
    model, optimizer = build(model_name)
    sp = None
    if variant != "dense":
        include = MODELS[model_name][3]
        sp = Sparsifier(
            model, optimizer, density=DENSITY, update_rule=variant, delta_t=2, total_steps=100, include=include,
            mask_cache=MASK_CACHE,
        )  # fmt: skip
    for x, y in batches:
        step(model, optimizer, sp, x, y)
    if sp is not None and variant == "rigl":
        assert sp.updates_done == 2
    print(_status_kib("VmHWM") - base)


def memory(model_name: str, batch: int, repeats: int = 3) -> dict:
    """Median over ``repeats`` fresh processes per variant (RSS moves with allocator decisions)."""
    samples: dict[str, list[float]] = {v: [] for v in ("dense", "static", "rigl")}
    for _ in range(repeats):
        for variant in samples:
            proc = subprocess.run(
                [sys.executable, __file__, "--memory-child", model_name, variant, "--batch", str(batch)]
                + ([] if MASK_CACHE else ["--no-mask-cache"]),
                capture_output=True,
                text=True,
                check=True,
            )
            samples[variant].append(int(proc.stdout.strip().splitlines()[-1]) / 1024)
    out: dict = {f"{v}_peak_growth_mib": statistics.median(x) for v, x in samples.items()}
    out["samples_mib"] = samples
    out["static_over_dense"] = out["static_peak_growth_mib"] / out["dense_peak_growth_mib"]
    out["rigl_over_dense"] = out["rigl_peak_growth_mib"] / out["dense_peak_growth_mib"]
    model, optimizer = build(model_name)
    sp = Sparsifier(
        model, optimizer, density=DENSITY, update_rule="static", account_flops=False, include=MODELS[model_name][3]
    )
    n_sparse = sum(sp.masks.numel(n) for n in sp.masks)
    n_params = sum(p.numel() for p in model.parameters())
    # What the masks add for sure: two bool tensors (mask, ever-active) per sparse weight and the
    # cached param-dtype copy of each mask, against the fp32 weights, gradients and momentum
    # buffers of a dense SGD run.
    out["mask_bytes_mib"] = 2 * n_sparse / 2**20
    out["mask_cache_mib"] = sp.masks.factor_cache_bytes() / 2**20
    out["dense_param_grad_momentum_mib"] = 3 * 4 * n_params / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=DELTA_T, help="timed steps per variant (ΔT=100 covers a period)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=None, help="default: each model's own (see MODELS)")
    parser.add_argument("--clock", choices=list(CLOCK), default="cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-child", nargs=2, metavar=("MODEL", "VARIANT"))
    parser.add_argument(
        "--no-mask-cache", action="store_true", help="sparsity.mask_cache=false: mask through the bool masks"
    )
    args = parser.parse_args()
    global MASK_CACHE
    MASK_CACHE = not args.no_mask_cache
    if args.memory_child:
        memory_child(*args.memory_child, batch=args.batch)
        return
    global clock
    clock = CLOCK[args.clock]
    if args.steps < DELTA_T:
        print(
            f"--steps {args.steps} < ΔT={DELTA_T}: no update inside the timed period (amortised from its measured cost)"
        )
    torch.set_num_threads(args.threads)
    result = {
        "density": DENSITY,
        "delta_t": DELTA_T,
        "threads": args.threads,
        "clock": args.clock,
        "mask_cache": MASK_CACHE,
        "models": {},
    }
    for name in args.models:
        batch = args.batch or MODELS[name][2]
        m = None
        if not args.no_memory:
            m = memory(name, batch)
            print(
                f"{name}: peak memory static/dense {m['static_over_dense']:.3f}, rigl/dense {m['rigl_over_dense']:.3f}",
                flush=True,
            )
        t = timing(name, args.steps, batch, args.warmup)
        result["models"][name] = {"batch": batch, "time": t, "memory": m}
        print(
            f"{name}: step static/dense {t['static_over_dense']:.3f}, rigl amortised/dense {t['rigl_amortised_over_dense']:.3f} "
            f"(period sum {t['rigl_period_sum_over_dense_sum']:.3f}), update = {t['rigl_update_in_dense_steps']:.2f} dense steps",
            flush=True,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
