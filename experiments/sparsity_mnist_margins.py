"""Measured margins for the MNIST learning tests: dense vs RigL at 0.1, ERK vs uniform at a low density,
and RigL/SET with their grow candidates as in RigL's code (the default) against the older default.

LeNet-300-100 (the MLP preset dense_mnist) on full MNIST, through the real CLI, several seeds.
Each run is a subprocess with one torch thread (on a shared 2-core machine, two threads per
process are many times slower). Needs $SPARSEFORGE_DATA_DIR with MNIST/raw.

    SPARSEFORGE_DATA_DIR=../shared/data python experiments/sparsity_mnist_margins.py --epochs 3 --seeds 0 1 2
    # grow candidates: all weights inactive after the drop (default) vs inactive before it
    ... sparsity_mnist_margins.py --variants rigl_erk_0.1 rigl_erk_0.1_before set_erk_0.1 set_erk_0.1_before

The last stdout line is one JSON object with every accuracy and the margins the variants allow.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

VARIANTS = {
    "dense": ["sparsity=dense"],
    "rigl_erk_0.1": ["sparsity=rigl", "sparsity.density=0.1", "sparsity.distribution=erk"],
    "rigl_erk_low": ["sparsity=rigl", "sparsity.distribution=erk"],
    "rigl_uniform_low": ["sparsity=rigl", "sparsity.distribution=uniform"],
    # grow only among weights inactive before the update (the default before RigL's candidates)
    "rigl_erk_0.1_before": ["sparsity=rigl", "sparsity.density=0.1", "sparsity.regrow_dropped=false"],
    "set_erk_0.1": ["sparsity=set", "sparsity.density=0.1", "sparsity.distribution=erk"],
    "set_erk_0.1_before": ["sparsity=set", "sparsity.density=0.1", "sparsity.regrow_dropped=false"],
}
MARGIN_VARIANTS = ["dense", "rigl_erk_0.1", "rigl_erk_low", "rigl_uniform_low"]


def run(name: str, overrides: list[str], seed: int, epochs: int, low: float, out: Path) -> dict:
    run_dir = out / f"{name}_s{seed}"
    extra = [f"sparsity.density={low}"] if name.endswith("_low") else []
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "+experiment=dense_mnist",
        *overrides,
        *extra,
        f"scenario.epochs_per_task={epochs}",
        f"seed={seed}",
        "logger=none",
        "print_config=false",
        "dataset.download=false",
        "trainer.enable_progress_bar=false",
        "hardware=cpu",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{name} seed {seed} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    sparsity = summary.get("sparsity", {})
    return {"acc": summary["metrics"]["test/acc"], "itop": sparsity.get("itop"), "grown": sparsity.get("grown_total")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--low", type=float, default=0.02, help="the low density for ERK vs uniform")
    parser.add_argument("--variants", nargs="+", default=MARGIN_VARIANTS, choices=list(VARIANTS))
    args = parser.parse_args()
    acc: dict[str, list[float]] = {k: [] for k in args.variants}
    itop: dict[str, list[float | None]] = {k: [] for k in args.variants}
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:  # seeds outermost: the variants interleave, so load drift hits them alike
            for name in args.variants:
                r = run(name, VARIANTS[name], seed, args.epochs, args.low, Path(tmp))
                acc[name].append(r["acc"])
                itop[name].append(r["itop"])
                print(f"seed {seed} {name:20s} test/acc {r['acc']:.4f}  itop {r['itop']}", flush=True)
    result = {"epochs": args.epochs, "seeds": args.seeds, "low_density": args.low, "test_acc": acc, "itop": itop}
    result["summary"] = {
        name: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0} for name, v in acc.items()
    }
    if {"dense", "rigl_erk_0.1"} <= set(acc):
        gap = [d - r for d, r in zip(acc["dense"], acc["rigl_erk_0.1"], strict=True)]
        result["dense_minus_rigl_0.1"] = {"per_seed": gap, "max": max(gap), "mean": statistics.mean(gap)}
    if {"rigl_erk_low", "rigl_uniform_low"} <= set(acc):
        erk_win = [e - u for e, u in zip(acc["rigl_erk_low"], acc["rigl_uniform_low"], strict=True)]
        result["erk_minus_uniform_low"] = {"per_seed": erk_win, "min": min(erk_win), "mean": statistics.mean(erk_win)}
    for rule in ("rigl", "set"):
        new, old = f"{rule}_erk_0.1", f"{rule}_erk_0.1_before"
        if {new, old} <= set(acc):
            diff = [a - b for a, b in zip(acc[new], acc[old], strict=True)]
            result[f"{rule}_after_minus_before"] = {"per_seed": diff, "mean": statistics.mean(diff)}
    result["wall_s"] = time.time() - started
    print(json.dumps(result))


if __name__ == "__main__":
    main()
