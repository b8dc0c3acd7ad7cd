"""Sparse execution backends against dense and masked training, measured side by side in one run.

Parts (``--parts``, default all):

- ``step``: a training step of the MLP 784-4096-4096-10 (SGD, momentum 0.9, weight decay 5e-4,
  static ERK masks) at (density, batch) = (0.05, 64), (0.1, 64), (0.05, 256). Arms: ``dense`` (no
  masks), ``masked`` (today's path), ``csr``, ``sparseprop`` (when installed), ``auto``. Ratios are
  dense time / arm time per round (> 1: faster than dense), median (min-max) over rounds.
- ``sweep``: the same step at batch 64 over densities 0.5 ... 0.02 (sparsity 50-98%), ``auto`` vs
  dense; the plot is saved as ``docs/assets/sparse_backend_speedup.png`` (``--plot``).
- ``plan``: RigL (ERK 0.05, ΔT=100) under ``auto``: seconds per topology update spent rebuilding
  plans (values and optimizer state remapped, kernel indices), against 100 steps of training.
- ``update``: RigL (ERK 0.05, ΔT=2) under ``masked`` and ``auto``: median time of an update step
  and of the ordinary step after it (20 steps after 4 of warm-up; one run per arm, not interleaved).
- ``memory``: peak RSS growth of a few training steps (RigL, ΔT=2: an update every second step;
  ``--memory-steps``, default 4), dense vs ``masked`` (with and without ``mask_cache``) vs
  ``auto``, each in its own process.
- ``export``: forward at batch 64 of the MLP exported with CSR Linear layers (uniform 95%) vs the
  dense model.
- ``conv``: a 95%-sparse 3x3 conv (128 channels, 16x16, batch 64), forward+backward through
  SparseProp vs dense, and what ``auto`` picks for it.

Every timed arm runs interleaved with the others in one process, in rotating order, with
``--threads`` torch threads (each value in turn). Both clocks are reported: process CPU time
(``cpu``; descheduling on a shared machine does not inflate it) and wall clock (``wall``).
The last stdout line is one JSON object.

    python experiments/bench_sparse_backends.py                              # everything
    python experiments/bench_sparse_backends.py --parts step --rounds 3 --threads 1
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
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sparseforge.models import create_model  # noqa: E402
from sparseforge.sparsity import Sparsifier  # noqa: E402
from sparseforge.sparsity.backends import sparseprop as sparseprop_kernels  # noqa: E402
from sparseforge.sparsity.backends.export import export_csr  # noqa: E402

HERE = Path(__file__).resolve().parent
STEP_CASES = [(0.05, 64), (0.1, 64), (0.05, 256)]
SWEEP_DENSITIES = [0.5, 0.3, 0.2, 0.1, 0.05, 0.02]


def backends() -> list[str]:
    arms = ["masked", "csr"]
    if sparseprop_kernels.unavailable_reason() is None:
        arms.append("sparseprop")
    return [*arms, "auto"]


def mlp_arm(
    backend: str,
    density: float,
    rule: str = "static",
    distribution: str = "erk",
    total_steps=None,
    delta_t=100,
    mask_cache: bool = True,
):
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=10, in_chans=1, image_size=28, hidden_sizes=[4096, 4096])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    sp = None
    if backend != "dense":
        sp = Sparsifier(
            model, optimizer, density=density, distribution=distribution, update_rule=rule, backend=backend,
            delta_t=delta_t, total_steps=total_steps, account_flops=False, mask_cache=mask_cache,
        )  # fmt: skip
    return model, optimizer, sp


def train_step(model, optimizer, sp, x, y=None) -> tuple[float, float]:
    """One optimizer step: cross-entropy with labels ``y``, or the mean square of the output."""
    cpu, wall = time.process_time(), time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    out = model(x)
    (F.cross_entropy(out, y) if y is not None else out.square().mean()).backward()
    if sp is not None:
        sp.before_optimizer_step()
    optimizer.step()
    if sp is not None:
        sp.after_optimizer_step()
    return time.process_time() - cpu, time.perf_counter() - wall


def interleave(arms: dict, run, rounds: int, warmup: int = 2) -> dict[str, list[tuple[float, float]]]:
    """``run(arm_value)`` -> (cpu, wall) seconds; rotating order; the first ``warmup`` rounds dropped."""
    names = list(arms)
    times = {name: [] for name in names}
    for i in range(warmup + rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            t = run(arms[name])
            if i >= warmup:
                times[name].append(t)
    return times


def ratios(times: dict, baseline: str) -> dict[str, dict]:
    out = {}
    for name, samples in times.items():
        entry = {}
        for clock, k in (("cpu", 0), ("wall", 1)):
            r = [b[k] / s[k] for b, s in zip(times[baseline], samples, strict=True)]
            entry[clock] = {"median": statistics.median(r), "min": min(r), "max": max(r)}
            entry[f"{clock}_ms"] = statistics.median(s[k] for s in samples) * 1e3
        out[name] = entry
    return out


def mnist_batch(batch: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g)


def part_step(rounds: int) -> dict:
    out = {}
    for density, batch in STEP_CASES:
        x, y = mnist_batch(batch)
        arms = {"dense": mlp_arm("dense", 1.0), **{b: mlp_arm(b, density) for b in backends()}}
        result = ratios(interleave(arms, lambda a, x=x, y=y: train_step(*a, x, y), rounds), "dense")
        if arms["auto"][2] is not None:
            result["auto"]["choices"] = {k: v["executor"] for k, v in arms["auto"][2].execution.chooser.choices.items()}
        out[f"density{density}_batch{batch}"] = result
        line = ", ".join(f"{k} {v['cpu']['median']:.2f}x" for k, v in result.items() if k != "dense")
        print(f"step d={density} b={batch} (dense/arm, cpu): {line}", flush=True)
    return out


def part_sweep(rounds: int, plot: bool) -> dict:
    x, y = mnist_batch(64)
    out = {}
    for density in SWEEP_DENSITIES:
        arms = {"dense": mlp_arm("dense", 1.0), "masked": mlp_arm("masked", density), "auto": mlp_arm("auto", density)}
        r = ratios(interleave(arms, lambda a: train_step(*a, x, y), rounds), "dense")
        out[str(density)] = {k: {"cpu": v["cpu"]["median"], "wall": v["wall"]["median"]} for k, v in r.items()}
        print(f"sweep sparsity {1 - density:.2f}: auto {r['auto']['cpu']['median']:.2f}x dense (cpu)", flush=True)
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        sparsity = [100 * (1 - d) for d in SWEEP_DENSITIES]
        fig, ax = plt.subplots(figsize=(6, 4))
        for arm, style in (("auto", "o-"), ("masked", "s--")):
            ax.plot(sparsity, [out[str(d)][arm]["cpu"] for d in SWEEP_DENSITIES], style, label=f"backend={arm}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xlabel("sparsity of the hidden layers (%)")
        ax.set_ylabel("training-step speed vs dense (x)")
        ax.set_title(f"MLP 784-4096-4096-10, batch 64, {torch.get_num_threads()} thread(s), CPU time")
        ax.legend()
        fig.tight_layout()
        path = HERE.parent / "docs" / "assets" / "sparse_backend_speedup.png"
        fig.savefig(path, dpi=120)
        out["plot"] = str(path)
    return out


def part_plan(steps: int) -> dict:
    """Plan rebuild cost per update under auto, RigL ERK 0.05, ΔT 100, against 100 steps."""
    x, y = mnist_batch(64)
    model, optimizer, sp = mlp_arm("auto", 0.05, rule="rigl", total_steps=10 * steps)
    cpu = 0.0
    for _ in range(steps):
        cpu += train_step(model, optimizer, sp, x, y)[0]
    execution = sp.execution
    per_update = execution.plan_seconds / max(sp.updates_done, 1)
    per_step = cpu / steps
    return {
        "updates": sp.updates_done,
        "plan_builds": execution.plan_builds,
        "plan_seconds_per_update": per_update,
        "step_seconds": per_step,
        "plan_share_at_delta_t_100": per_update / (100 * per_step + per_update),
        "steps": steps,
    }


def part_update(steps: int = 20) -> dict:
    """Median CPU/wall ms of RigL update steps and of the ordinary steps between them (ΔT=2)."""
    x, y = mnist_batch(64)
    out = {}
    for arm in ("masked", "auto"):
        model, optimizer, sp = mlp_arm(arm, 0.05, rule="rigl", total_steps=100 * steps, delta_t=2)
        times: dict[str, list] = {"update": [], "ordinary": []}
        for i in range(4 + steps):
            before = sp.updates_done
            t = train_step(model, optimizer, sp, x, y)
            if i >= 4:
                times["update" if sp.updates_done > before else "ordinary"].append(t)
        out[arm] = {
            kind: {f"{clock}_ms": statistics.median(t[k] for t in v) * 1e3 for clock, k in (("cpu", 0), ("wall", 1))}
            for kind, v in times.items()
        }
    return out


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def memory_child(arm: str, steps: int = 4) -> None:
    torch.set_num_threads(1)
    x, y = mnist_batch(64)
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmRSS")
    backend, _, cache = arm.partition("_")  # masked_nocache: the masked path without cached float masks
    model, optimizer, sp = mlp_arm(
        backend, 0.05, rule="rigl", total_steps=100, delta_t=2, mask_cache=cache != "nocache"
    )
    for _ in range(steps):  # a RigL update every second step (two in the default 4 steps)
        train_step(model, optimizer, sp, x, y)
    print(_status_kib("VmHWM") - base)


def part_memory(repeats: int = 2, steps: int = 4) -> dict:
    samples: dict[str, list[float]] = {"dense": [], "masked": [], "masked_nocache": [], "auto": []}
    for _ in range(repeats):
        for arm in samples:
            proc = subprocess.run(
                [sys.executable, __file__, "--memory-child", arm, "--memory-steps", str(steps)],
                capture_output=True,
                text=True,
                check=True,
            )
            samples[arm].append(int(proc.stdout.strip().splitlines()[-1]) / 1024)
    out = {f"{k}_peak_growth_mib": statistics.median(v) for k, v in samples.items()}
    out["steps"] = steps
    out["auto_over_dense"] = out["auto_peak_growth_mib"] / out["dense_peak_growth_mib"]
    out["masked_over_dense"] = out["masked_peak_growth_mib"] / out["dense_peak_growth_mib"]
    out["masked_nocache_over_dense"] = out["masked_nocache_peak_growth_mib"] / out["dense_peak_growth_mib"]
    return out


def part_export(rounds: int) -> dict:
    model, optimizer, sp = mlp_arm("masked", 0.05, distribution="uniform")
    dense_model, _, _ = mlp_arm("dense", 1.0)
    x, _ = mnist_batch(64)
    exported, report = export_csr(model, {n: sp.masks[n] for n in sp.masks}, x)
    dense_model.eval()

    @torch.no_grad()
    def forward(m) -> tuple[float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        m(x)
        return time.process_time() - cpu, time.perf_counter() - wall

    r = ratios(interleave({"dense": dense_model, "csr_export": exported}, forward, rounds), "dense")
    return {"csr_export": r["csr_export"], "dense_ms_cpu": r["dense"]["cpu_ms"], "max_abs_diff": report["max_abs_diff"]}


def part_conv(rounds: int) -> dict:
    reason = sparseprop_kernels.unavailable_reason()
    if reason:
        return {"skipped": reason}

    def conv_arm(backend: str):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1, bias=False))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        sp = None
        if backend != "dense":
            sp = Sparsifier(
                model, optimizer, density=0.05, distribution="uniform", update_rule="static", backend=backend,
                account_flops=False,
            )  # fmt: skip
        return model, optimizer, sp

    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 128, 16, 16, generator=g).requires_grad_()  # a layer inside a network: input gradient too

    def run(arm) -> tuple[float, float]:
        return train_step(*arm, x)

    arms = {"dense": conv_arm("dense"), "sparseprop": conv_arm("sparseprop"), "auto": conv_arm("auto")}
    r = ratios(interleave(arms, run, rounds), "dense")
    r["auto"]["choice"] = arms["auto"][2].execution.chooser.choices.get("0", {}).get("executor")
    return r


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", nargs="+", default=["step", "sweep", "plan", "update", "memory", "export", "conv"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--plan-steps", type=int, default=201, help="steps of the RigL run in 'plan' (>= 101)")
    parser.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--memory-child", default=None)
    parser.add_argument("--memory-steps", type=int, default=4, help="steps per process in 'memory' (ΔT=2)")
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.memory_steps)
        return
    result: dict = {
        "torch": torch.__version__,
        "rounds": args.rounds,
        "sparseprop": sparseprop_kernels.unavailable_reason() or "available",
        "threads": {},
    }
    for threads in args.threads:
        torch.set_num_threads(threads)
        per: dict = {}
        for part in args.parts:
            print(f"-- {part}, {threads} thread(s)", flush=True)
            if part == "step":
                per[part] = part_step(args.rounds)
            elif part == "sweep":
                per[part] = part_sweep(args.rounds, args.plot and threads == args.threads[0])
            elif part == "plan":
                per[part] = part_plan(args.plan_steps)
                print(f"plan: {per[part]['plan_share_at_delta_t_100']:.2%} of run time at ΔT=100", flush=True)
            elif part == "update":
                per[part] = part_update()
                print(
                    "update (cpu ms): "
                    + json.dumps({a: {k: round(v["cpu_ms"], 1) for k, v in r.items()} for a, r in per[part].items()}),
                    flush=True,
                )
            elif part == "memory" and threads == args.threads[0]:
                per[part] = part_memory(steps=args.memory_steps)
                print(
                    "memory: peak over dense: "
                    + json.dumps({k: round(v, 3) for k, v in per[part].items() if k.endswith("over_dense")}),
                    flush=True,
                )
            elif part == "export":
                per[part] = part_export(args.rounds)
                print(f"export: CSR forward {per[part]['csr_export']['cpu']['median']:.2f}x dense", flush=True)
            elif part == "conv":
                per[part] = part_conv(args.rounds)
                print(
                    f"conv: {json.dumps({k: v.get('cpu', {}).get('median') if isinstance(v, dict) else v for k, v in per[part].items()})}",
                    flush=True,
                )
        result["threads"][str(threads)] = per
    print(json.dumps(result))


if __name__ == "__main__":
    main()
