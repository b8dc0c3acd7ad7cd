"""Reduced-scale PGF check: does progressive gradient flow beat SR-STE at high N:M sparsity?

MLP 784-256-128-10 on full MNIST; the two hidden linears are N:M (in_features 784 = 16 x 49 and
256), the classifier stays dense (as the paper keeps the head dense). Arms: dense, hard-mask STE,
SR-STE (lambda_w 2e-4), MdGf-Linear, MdGf-Exponential (rate 10) and SdGf-Stepwise, at 1:8 and
1:16, 3 seeds. Every run is a real `python train.py` in a subprocess (Adam 1e-3, cosine, batch
128, --epochs epochs). MdGf's alpha reaches exactly 0 at 75% of training and SdGf's stages fill
the first 75%, so both PGF arms end with the same binary fine-tune at the target N:M; STE and
SR-STE are binary from the first step. Test accuracy is always that of the binary N:M model.

Prints one line per run, a table of test accuracy (mean +- std over seeds) and training FLOPs
relative to dense (our convention, README), and as the LAST line a JSON object with every figure.

    SPARSEFORGE_DATA_DIR=/path/to/data python experiments/pgf_reduced/run.py [--seeds 0 1 2] [--epochs 3]
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

REPO = Path(__file__).resolve().parents[2]

COMMON = [
    "dataset=mnist", "model=mlp", "model.hidden_sizes=[256,128]", "scenario=iid", "optimizer=adam",
    "optimizer.lr=1e-3", "optimizer.weight_decay=0", "lr_scheduler=cosine", "data.batch_size=128",
    "logger=none", "callbacks=none", "print_config=false", "trainer.enable_progress_bar=false",
]  # fmt: skip
NM = ["sparsity=nm", "sparsity.include=[features.1,features.3]"]
ARMS = {
    "dense": ["sparsity=dense"],
    "ste": [*NM, "sparsity.mode=ste"],
    "srste": [*NM, "sparsity.mode=srste", "sparsity.srste.lambda_w=2e-4"],
    "mdgf_linear": [*NM, "sparsity.mode=mdgf", "sparsity.mdgf.decay=linear", "sparsity.mdgf.end_fraction=0.75"],
    "mdgf_exp": [
        *NM, "sparsity.mode=mdgf", "sparsity.mdgf.decay=exponential", "sparsity.mdgf.rate=10",
        "sparsity.mdgf.end_fraction=0.75",
    ],
    "sdgf_stepwise": [*NM, "sparsity.mode=sdgf", "sparsity.sdgf.structure=stepwise", "sparsity.sdgf.finetune_fraction=0.25"],
}  # fmt: skip


def run(arm: str, pattern: str | None, seed: int, epochs: int, out: Path, extra: list[str], threads: int) -> dict:
    n, m = pattern.split(":") if pattern else (None, None)
    run_dir = out / f"{arm}_{n}of{m}_seed{seed}" if pattern else out / f"{arm}_seed{seed}"
    args = [
        sys.executable, str(REPO / "train.py"), *COMMON, *ARMS[arm], f"scenario.epochs_per_task={epochs}",
        f"seed={seed}", f"hydra.run.dir={run_dir}", *extra,
    ]  # fmt: skip
    if pattern:
        args += [f"sparsity.n={n}", f"sparsity.m={m}"]
    start = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # small MLP: no gain from more threads on a shared box
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{arm} {pattern} seed {seed} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "arm": arm,
        "pattern": pattern or "dense",
        "seed": seed,
        "test_acc": summary["metrics"]["test/acc"],
        "density": summary.get("sparsity", {}).get("density"),
        "train_flops_rel": summary.get("flops", {}).get("train_relative_to_dense"),
        "wall_s": time.time() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--patterns", nargs="+", default=["1:8", "1:16"])
    parser.add_argument("--arms", nargs="+", default=list(ARMS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    parser.add_argument("--out", type=Path, default=None, help="run directories (default: a temp dir)")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides for every run")
    args = parser.parse_args()
    if not os.environ.get("SPARSEFORGE_DATA_DIR"):
        raise SystemExit("set SPARSEFORGE_DATA_DIR to a folder holding MNIST/raw")
    out = args.out or Path(tempfile.mkdtemp(prefix="pgf_reduced_"))
    cells = [("dense", None)] if "dense" in args.arms else []
    cells += [(arm, p) for p in args.patterns for arm in args.arms if arm != "dense"]
    results = []
    for seed in args.seeds:  # seeds outermost: the arms interleave, so load drift hits them alike
        for arm, pattern in cells:
            r = run(arm, pattern, seed, args.epochs, out, args.overrides, args.threads)
            results.append(r)
            print(
                f"{arm:14s} {r['pattern']:5s} seed {seed}: test acc {100 * r['test_acc']:.2f}%  "
                f"train FLOPs {r['train_flops_rel']:.3f} x dense  ({r['wall_s']:.0f} s)",
                flush=True,
            )
    table = {}
    print(f"\n{'arm':14s} {'N:M':5s} {'test acc (%)':>16s} {'train FLOPs/dense':>18s}")
    for arm, pattern in cells:
        rows = [r for r in results if r["arm"] == arm and r["pattern"] == (pattern or "dense")]
        accs = [100 * r["test_acc"] for r in rows]
        mean, std = statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0
        flops = statistics.mean(r["train_flops_rel"] for r in rows)
        table[f"{arm}@{pattern or 'dense'}"] = {
            "acc_mean": mean,
            "acc_std": std,
            "train_flops_rel": flops,
            "accs": accs,
        }
        print(f"{arm:14s} {pattern or 'dense':5s} {mean:10.2f} +- {std:4.2f} {flops:18.3f}")
    print(json.dumps({"epochs": args.epochs, "seeds": args.seeds, "table": table, "runs": results, "out": str(out)}))


if __name__ == "__main__":
    main()
