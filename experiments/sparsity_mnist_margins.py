"""Measured margins for the MNIST learning tests: dense vs RigL at 0.1, ERK vs uniform at a low density.

LeNet-300-100 (the MLP preset dense_mnist) on full MNIST, through the real CLI, several seeds.
Each run is a subprocess with one torch thread (on a shared 2-core machine, two threads per
process are many times slower). Needs $SPARSEFORGE_DATA_DIR with MNIST/raw.

    SPARSEFORGE_DATA_DIR=../shared/data python experiments/sparsity_mnist_margins.py --epochs 3 --seeds 0 1 2

The last stdout line is one JSON object with every accuracy and the margins.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

VARIANTS = {
    "dense": ["sparsity=dense"],
    "rigl_erk_0.1": ["sparsity=rigl", "sparsity.density=0.1", "sparsity.distribution=erk"],
    "rigl_erk_low": ["sparsity=rigl", "sparsity.distribution=erk"],
    "rigl_uniform_low": ["sparsity=rigl", "sparsity.distribution=uniform"],
}


def run(name: str, overrides: list[str], seed: int, epochs: int, low: float, out: Path) -> float:
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
    return summary["metrics"]["test/acc"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--low", type=float, default=0.02, help="the low density for ERK vs uniform")
    args = parser.parse_args()
    acc: dict[str, list[float]] = {k: [] for k in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name, overrides in VARIANTS.items():
                acc[name].append(run(name, overrides, seed, args.epochs, args.low, Path(tmp)))
                print(f"seed {seed} {name:18s} test/acc {acc[name][-1]:.4f}", flush=True)
    gap = [d - r for d, r in zip(acc["dense"], acc["rigl_erk_0.1"], strict=True)]
    erk_win = [e - u for e, u in zip(acc["rigl_erk_low"], acc["rigl_uniform_low"], strict=True)]
    result = {
        "epochs": args.epochs,
        "seeds": args.seeds,
        "low_density": args.low,
        "test_acc": acc,
        "dense_minus_rigl_0.1": {"per_seed": gap, "max": max(gap), "mean": statistics.mean(gap)},
        "erk_minus_uniform_low": {"per_seed": erk_win, "min": min(erk_win), "mean": statistics.mean(erk_win)},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
