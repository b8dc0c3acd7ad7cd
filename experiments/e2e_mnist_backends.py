"""End to end: ``python train.py`` on full MNIST, dense vs sparse, wall time of the whole process.

``--preset backends`` (default): MLP 784-4096-4096-10, dense vs RigL masked vs RigL auto.
Three runs per round, in rotating order (one round by default), each a real training process:

- ``dense``:  ``sparsity=dense``;
- ``masked``: ``sparsity=rigl sparsity.density=0.05`` (ERK, ΔT=100), ``sparsity.backend=masked``;
- ``auto``:   the same with ``sparsity.backend=auto``.

Same seed, iid scenario, finetune, SGD (lr 0.1, momentum 0.9, weight decay 5e-4), batch 128,
``--epochs`` epochs. Reported: wall time of each run (summary.json's ``wall_time_s``, the
whole process: data, training, evaluation), the ratios dense/auto and masked/auto, and test
accuracy (auto vs masked: same seed, so they differ only by float summation order).

    SPARSEFORGE_DATA_DIR=/path/with/MNIST/raw python experiments/e2e_mnist_backends.py --epochs 3
    python experiments/e2e_mnist_backends.py --epochs 1 --limit-batches 20     # a quick check

``--preset nm``: MLP 784-512-512-10, dense vs both hidden layers 1:8 SR-STE (``sparsity=nm``),
AdamW (lr 1e-3), batch 128, ``--epochs`` epochs (2 for the N:M overhead goal); reported: the
wall-time ratio nm/dense per round and the test accuracy of both.

``--cpu-allocator`` (default ``retain``, ``train.py``'s default) is passed to every run.

    python experiments/e2e_mnist_backends.py --preset nm --epochs 2 --rounds 2

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESETS = {
    # name: (overrides shared by every arm, {arm: its own overrides})
    "backends": (
        ["model.hidden_sizes=[4096,4096]", "optimizer=sgd", "optimizer.lr=0.1"],
        {
            "dense": ["sparsity=dense"],
            "masked": ["sparsity=rigl", "sparsity.density=0.05", "sparsity.backend=masked"],
            "auto": ["sparsity=rigl", "sparsity.density=0.05", "sparsity.backend=auto"],
        },
    ),
    "nm": (
        ["model.hidden_sizes=[512,512]", "optimizer=adamw", "optimizer.lr=1e-3"],
        {
            "dense": ["sparsity=dense"],
            "nm": [
                "sparsity=nm",
                "sparsity.n=1",
                "sparsity.m=8",
                "sparsity.mode=srste",
                "sparsity.include=[features.1,features.3]",
                "sparsity.export=false",
            ],  # fmt: skip
        },
    ),
}


def run(arm: str, out_dir: Path, args) -> dict:
    shared, arms = PRESETS[args.preset]
    overrides = [
        "dataset=mnist", "model=mlp", "scenario=iid", "method=finetune", *shared,
        f"scenario.epochs_per_task={args.epochs}", "data.batch_size=128",
        f"seed={args.seed}", "logger=none", "print_config=false", "trainer.enable_progress_bar=false",
        f"torch_threads={args.threads}", f"cpu_allocator={args.cpu_allocator}", f"hydra.run.dir={out_dir}",
        *arms[arm],
    ]  # fmt: skip
    if args.limit_batches:
        overrides += [f"trainer.limit_train_batches={args.limit_batches}"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": str(args.threads)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *overrides], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{arm} failed:\n{proc.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = json.loads((out_dir / "summary.json").read_text())
    sparsity = summary.get("sparsity", {})
    return {
        "wall_time_s": summary["wall_time_s"],
        # the CPU time of the whole process (imports, data, training, evaluation): on a shared
        # machine it is not inflated by waiting for a core, as the wall time is
        "process_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "test_acc": summary["metrics"].get("test/acc"),
        "density": sparsity.get("density"),
        "executors": sparsity.get("execution", {}).get("executors"),
        "plan_build_cpu_seconds": sparsity.get("execution", {}).get("plan_build_cpu_seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="backends", choices=list(PRESETS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-allocator", default="retain", choices=["system", "retain"], help="as train.py's")
    parser.add_argument("--limit-batches", type=int, default=None, help="batches per epoch (a quick check)")
    args = parser.parse_args()
    arms = PRESETS[args.preset][1]
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as tmp:
        names = list(arms)
        for r in range(args.rounds):
            for arm in names[r % len(names) :] + names[: r % len(names)]:
                results[arm].append(run(arm, Path(tmp) / f"{arm}{r}", args))
                print(f"round {r} {arm}: {results[arm][-1]}", flush=True)
    out = {
        "preset": args.preset,
        "epochs": args.epochs,
        "threads": args.threads,
        "limit_batches": args.limit_batches,
        "cpu_allocator": args.cpu_allocator,
        "runs": results,
    }
    for r in range(args.rounds):
        w = {arm: results[arm][r]["wall_time_s"] for arm in arms}
        if args.preset == "nm":
            cpu = {arm: results[arm][r]["process_cpu_s"] for arm in arms}
            out.setdefault("nm_over_dense_wall", []).append(w["nm"] / w["dense"])
            out.setdefault("nm_over_dense_process_cpu", []).append(cpu["nm"] / cpu["dense"])
            continue
        out.setdefault("dense_over_auto_wall", []).append(w["dense"] / w["auto"])
        out.setdefault("masked_over_auto_wall", []).append(w["masked"] / w["auto"])
        acc = {arm: results[arm][r]["test_acc"] for arm in arms}
        if acc["auto"] is not None and acc["masked"] is not None:
            out.setdefault("acc_points_auto_minus_masked", []).append(100 * (acc["auto"] - acc["masked"]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
