"""Split MNIST class-IL quality check: finetune vs ER vs ER-ACE vs DER++ (buffer 500), 3 seeds.

Full MNIST must be reachable through $SPARSEFORGE_DATA_DIR (a folder holding MNIST/raw). Every
run is a real `python train.py +experiment=split_mnist sparsity=dense method=...` in a subprocess
(1 epoch per task, MLP 784-100-100-10). Prints one line per run, a table of mean +- std of the
final average accuracy, and as the LAST line a JSON object with every figure.

    SPARSEFORGE_DATA_DIR=/path/to/data python experiments/cl_quality_split_mnist.py [--seeds 0 1 2]
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

# Method-specific overrides. DER++: Mammoth's Split-MNIST values for buffer 500 (alpha 1.0,
# beta 0.5; utils/best_args.py); ER and DER++ replay a draw as large as the batch.
METHODS = {
    "finetune": ["method=finetune"],
    "er": ["method=er", "method.buffer_size=500"],
    "er_ace": ["method=er_ace", "method.buffer_size=500"],  # cosine classifier, as current Mammoth
    "er_ace_linear": ["method=er_ace", "method.buffer_size=500", "method.cosine_classifier=false"],
    "derpp": ["method=derpp", "method.buffer_size=500", "method.alpha=1.0", "method.beta=0.5"],
}


def run(method: str, seed: int, out: Path, extra: list[str]) -> dict:
    run_dir = out / f"{method}_seed{seed}"
    args = [
        sys.executable,
        str(REPO / "train.py"),
        "+experiment=split_mnist",
        "sparsity=dense",
        *METHODS[method],
        f"seed={seed}",
        "logger=none",
        "callbacks=none",
        "task_loop.heatmap=false",
        "print_config=false",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    start = time.time()
    # One intra-op thread unless told otherwise: tiny MLP ops on a shared CPU are much slower
    # with several threads competing (measured 5 ms vs 167 ms per step on a loaded 2-core box).
    env = {"OMP_NUM_THREADS": "1", **os.environ}
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{method} seed {seed} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    cl = summary["cl"]
    return {
        "method": method,
        "seed": seed,
        "avg_acc": cl["avg_acc"],
        "avg_acc_task_il": cl["avg_acc_task_il"],
        "forgetting": cl["forgetting"],
        "bwt": cl["bwt"],
        "final_row": cl["acc_matrix"][-1],
        "eval_share": cl["eval_share"],
        "wall_s": time.time() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["finetune", "er", "er_ace", "derpp"], choices=list(METHODS))
    parser.add_argument("--out", type=Path, default=None, help="run directories (default: a temp dir)")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides for every run")
    args = parser.parse_args()
    if not os.environ.get("SPARSEFORGE_DATA_DIR"):
        raise SystemExit("set SPARSEFORGE_DATA_DIR to a folder holding MNIST/raw")
    out = args.out or Path(tempfile.mkdtemp(prefix="cl_quality_"))
    results = []
    for seed in args.seeds:  # seeds outermost: methods interleave, so load drift hits them alike
        for method in args.methods:
            r = run(method, seed, out, args.overrides)
            results.append(r)
            print(
                f"{method:13s} seed {seed}: avg acc {100 * r['avg_acc']:.2f}%  task-IL {100 * r['avg_acc_task_il']:.2f}%  "
                f"forgetting {100 * r['forgetting']:.2f}  ({r['wall_s']:.0f} s)",
                flush=True,
            )
    table = {}
    for method in args.methods:
        accs = [r["avg_acc"] for r in results if r["method"] == method]
        til = [r["avg_acc_task_il"] for r in results if r["method"] == method]
        fgt = [r["forgetting"] for r in results if r["method"] == method]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        table[method] = {
            "avg_acc_mean": statistics.mean(accs),
            "avg_acc_std": std,
            "avg_acc_task_il_mean": statistics.mean(til),
            "forgetting_mean": statistics.mean(fgt),
            "seeds": args.seeds,
        }
        print(
            f"{method:13s} class-IL {100 * statistics.mean(accs):.1f} +- {100 * std:.1f}   "
            f"task-IL {100 * statistics.mean(til):.1f}   forgetting {100 * statistics.mean(fgt):.1f}"
        )
    print(json.dumps({"split_mnist_class_il": table, "runs": results}))


if __name__ == "__main__":
    main()
