"""Reduced-scale SHARP reproduction: Split MNIST class-IL (5 tasks x 2 classes), full MNIST.

Arms, all on SHARP's MNISTLIKE network (conv16-pool-conv16-pool, 784-500-500, Adadelta lr 1.0,
batch 256, no augmentation), the same epochs per task, 3 seeds:

- ``sharp``: SHARP (preset ``sharp_mnist``): 40% density, 8-bit activation replay of the previous
  task's 2 classes (25 samples each, 16x7x7 = 784 bytes a sample), kNN over the LTM;
- ``sharp_raw``: the same with raw-input replay (the uint8 images: also 784 bytes a sample);
- ``er_stm``: dense ER (cross-entropy on the linear head, reservoir buffer) with the **same bytes
  as SHARP's replay memory** (STM): ``buffer_size = STM bytes // bytes per ER slot`` (784-byte
  image + label + task id = 800 bytes);
- ``er_stm_ltm``: ER with the bytes of SHARP's STM **plus its LTM** (the float32 representations
  the kNN needs, 25 x 500 x 4 bytes per class), the fuller memory comparison;
- ``finetune``: the same dense network, no replay (lower bound).

Reduction (the paper's recipe is 10 phases x 3 epochs = 30 epochs per task): ``--phases P``
phases of one epoch each, and the cosine threshold's period scaled with them
(``tau_param = 3 P``), so the threshold ends at the same point of its schedule as the paper's
(tau(10)/30 = 0.75 -> the 90% floor). ``--full`` runs the paper's recipe.

Each run is a real ``python train.py`` in a subprocess. Prints one line per run, a table (mean
+- std over seeds) of average class-IL accuracy after the last task, forgetting and memory, and
as the LAST line a JSON object with every figure.

    SPARSEFORGE_DATA_DIR=/path/to/data python experiments/sharp_reduced/run.py [--seeds 0 1 2] [--phases 3] [--jobs 1]
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
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from sparseforge.continual.buffer import capacity_for_bytes  # noqa: E402

COMMON = [
    "dataset.download=false", "logger=none", "callbacks=none", "print_config=false",
    "trainer.enable_progress_bar=false", "sparsity=dense",
]  # fmt: skip
# The same network, optimizer, batch and stream for the non-SHARP arms.
BASELINE = [
    "dataset=mnist", "model=sharp_mnistlike", "scenario=class_il", "scenario.n_tasks=5", "optimizer=adadelta",
    "optimizer.lr=1.0", "optimizer.weight_decay=0", "lr_scheduler=none", "data.batch_size=256",
]  # fmt: skip
ARMS = ("sharp", "sharp_raw", "er_stm", "er_stm_ltm", "finetune")

# SHARP's memory for Split MNIST, from its settings (checked against every run's summary.json):
# the STM holds the previous task's 2 classes x 25 samples x 784 uint8 values + a float32
# min and max per class; the LTM holds 10 classes x 25 x 500 float32 values + a 500-unit mask.
STM_BYTES = 2 * 25 * 784 + 2 * 8
LTM_BYTES = 10 * (25 * 500 * 4 + 500)
MNIST_SHAPE = (1, 28, 28)


def overrides(arm: str, phases: int, phase_epochs: int, tau: float) -> list[str]:
    epochs = phases * phase_epochs
    sharp = [
        "+experiment=sharp_mnist", f"method.phase_epochs={phase_epochs}", f"method.max_phases={phases}",
        f"method.tau_param={tau}", f"scenario.epochs_per_task={epochs}",
    ]  # fmt: skip
    if arm == "sharp":
        return sharp
    if arm == "sharp_raw":
        return [*sharp, "method.replay_layer=input"]
    common = [*BASELINE, f"scenario.epochs_per_task={epochs}"]
    if arm == "finetune":
        return [*common, "method=finetune"]
    budget = STM_BYTES if arm == "er_stm" else STM_BYTES + LTM_BYTES
    size = capacity_for_bytes(budget, MNIST_SHAPE)
    return [*common, "method=er", f"method.buffer_size={size}", "method.minibatch_size=256"]


def run(arm: str, seed: int, args, out: Path) -> dict:
    run_dir = out / f"{arm}_seed{seed}"
    cmd = [
        sys.executable, str(REPO / "train.py"), *COMMON, *overrides(arm, args.phases, args.phase_epochs, args.tau),
        f"seed={seed}", f"hydra.run.dir={run_dir}", *args.overrides,
    ]  # fmt: skip
    start = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{arm} seed {seed} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    replay = summary.get("replay", {})
    row = {
        "arm": arm,
        "seed": seed,
        "avg_acc": summary["cl"]["avg_acc"],
        "forgetting": summary["cl"]["forgetting"],
        "acc_matrix": summary["cl"]["acc_matrix"],
        "replay_bytes": replay.get("bytes", 0),
        "replay_samples": replay.get("samples", 0),
        "ltm_bytes": replay.get("ltm_bytes", 0),
        # training FLOPs relative to the same examples through the dense network (the dense arms: 1)
        "train_flops_rel": summary.get("flops", {}).get("train_relative_to_dense"),
        "train_flops": summary.get("flops", {}).get("train_total"),
        "wall_s": time.time() - start,
    }
    if arm.startswith("sharp"):  # the budgets the ER arms were given must be what SHARP used
        assert (row["replay_bytes"], row["ltm_bytes"]) == (STM_BYTES, LTM_BYTES), (arm, replay)
    return row


def _mean_or_none(values: list) -> float | None:
    """The mean, or None when no run reported the value (summaries from before FLOPs were counted)."""
    present = [v for v in values if v is not None]
    return statistics.mean(present) if present else None


def fmt(values: list[float], scale: float = 100.0) -> str:
    mean = statistics.mean(values) * scale
    std = (statistics.stdev(values) if len(values) > 1 else 0.0) * scale
    return f"{mean:6.2f} +- {std:5.2f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--phases", type=int, default=3, help="SHARP phases per task (1 epoch each)")
    parser.add_argument("--full", action="store_true", help="the paper's recipe: 10 phases x 3 epochs, tau 30")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (1: one after another)")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each run")
    parser.add_argument("--out", type=Path, default=None, help="run directories (default: a temp dir)")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides for every run")
    args = parser.parse_args()
    args.phase_epochs, args.tau = (3, 30.0) if args.full else (1, 3.0 * args.phases)
    if args.full:
        args.phases = 10
    if not os.environ.get("SPARSEFORGE_DATA_DIR"):
        raise SystemExit("set SPARSEFORGE_DATA_DIR to a folder holding MNIST/raw")
    out = args.out or Path(tempfile.mkdtemp(prefix="sharp_reduced_"))
    # seeds outermost: the arms interleave, so load drift on a shared machine hits them alike
    cells = [(arm, seed) for seed in args.seeds for arm in args.arms]
    started = time.time()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run, arm, seed, args, out) for arm, seed in cells]
        results = []
        for future in as_completed(futures):
            r = future.result()
            results.append(r)
            print(
                f"{r['arm']:11s} seed {r['seed']}: avg acc {100 * r['avg_acc']:.2f}%  forgetting "
                f"{100 * (r['forgetting'] or 0):.2f}  replay {r['replay_bytes']} B ({r['wall_s']:.0f} s)",
                flush=True,
            )
    epochs = args.phases * args.phase_epochs
    print(f"\nSplit MNIST class-IL, {epochs} epochs/task, seeds {args.seeds}, {time.time() - started:.0f} s in all")
    header = (
        f"{'arm':11s} {'avg acc (%)':>15s} {'forgetting (%)':>15s} {'replay B':>9s} {'samples':>7s} {'+LTM B':>8s}"
        f" {'train GFLOPs':>12s} {'vs dense':>8s}"
    )
    print(header)
    table = {}
    for arm in args.arms:
        rows = [r for r in results if r["arm"] == arm]
        acc, forget = [r["avg_acc"] for r in rows], [r["forgetting"] or 0.0 for r in rows]
        table[arm] = {
            "avg_acc_mean": statistics.mean(acc),
            "avg_acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "forgetting_mean": statistics.mean(forget),
            "forgetting_std": statistics.stdev(forget) if len(forget) > 1 else 0.0,
            "replay_bytes": rows[0]["replay_bytes"],
            "replay_samples": rows[0]["replay_samples"],
            "ltm_bytes": rows[0]["ltm_bytes"],
            "train_flops_mean": _mean_or_none([r["train_flops"] for r in rows]),
            "train_flops_rel_mean": _mean_or_none([r["train_flops_rel"] for r in rows]),
        }
        t = table[arm]
        gflops = f"{t['train_flops_mean'] / 1e9:12.1f}" if t["train_flops_mean"] else f"{'-':>12s}"
        rel = f"{t['train_flops_rel_mean']:8.3f}" if t["train_flops_rel_mean"] else f"{'-':>8s}"
        print(
            f"{arm:11s} {fmt(acc)} {fmt(forget)} {t['replay_bytes']:9d} {t['replay_samples']:7d} {t['ltm_bytes']:8d}"
            f" {gflops} {rel}"
        )
    print(
        json.dumps({"epochs_per_task": epochs, "seeds": args.seeds, "table": table, "runs": results, "out": str(out)})
    )


if __name__ == "__main__":
    main()
