"""Mammoth's own ER and DER++ on seq-mnist (buffer 500, its best arguments), per seed: the
reference side of ``mammoth_parity_seq_mnist.py``.

Runs an aimagelab/mammoth checkout's ``main.py`` once per method and seed, one after another, on
the CPU with one intra-op thread, and reads the final class-IL average accuracy from its log
("Accuracy for 5 task(s): [Class-IL]: ..."). Mammoth needs MNIST's raw files under
``<base_path>/MNIST/MNIST/raw`` (test set) and ``<base_path>/MNIST/MyMNIST/raw`` (training set: its
dataset class is named MyMNIST; a symbolic link to the first folder will do); it cannot download
them offline. Mammoth imports every dataset module at start, so modules that need packages or
weights this machine lacks may have to be moved out of its ``datasets/`` folder first. Last stdout
line: one JSON object.

    python experiments/mammoth_reference_seq_mnist.py --mammoth /path/to/mammoth \
        --base-path /path/to/mammoth_data/ [--python /path/to/python] --methods er derpp --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

# utils/best_args.py, best_args['seq-mnist'][method][500]; batch 10, 1 epoch per task.
BEST_ARGS = {
    "er": ["--lr", "0.1", "--minibatch_size", "10"],
    "derpp": ["--lr", "0.03", "--minibatch_size", "10", "--alpha", "1.0", "--beta", "0.5"],
}
FINAL = re.compile(r"Accuracy for 5 task\(s\):\s+\[Class-IL\]: ([0-9.]+) %")


def run_one(args, method: str, seed: int, log_dir: Path) -> float:
    command = [
        args.python,
        "main.py",
        "--dataset", "seq-mnist",
        "--model", method,
        "--buffer_size", "500",
        "--batch_size", "10",
        "--n_epochs", "1",
        "--seed", str(seed),
        "--non_verbose", "1",
        "--num_workers", "0",
        "--base_path", args.base_path,
        *BEST_ARGS[method],
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = log_dir / f"{method}_seed{seed}.log"
    with log.open("w") as out:
        subprocess.run(command, cwd=args.mammoth, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    found = FINAL.findall(log.read_text())
    if not found:
        raise RuntimeError(f"no final class-IL accuracy in {log}")
    return float(found[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mammoth", type=Path, required=True, help="a checkout of aimagelab/mammoth")
    parser.add_argument("--base-path", required=True, help="Mammoth's --base_path (holds MNIST/)")
    parser.add_argument("--python", default=sys.executable, help="an interpreter with Mammoth's requirements")
    parser.add_argument("--methods", nargs="+", default=["er", "derpp"], choices=sorted(BEST_ARGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--logs", type=Path, default=Path("mammoth_logs"))
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    table = {}
    for method in args.methods:
        per_seed = []
        for seed in args.seeds:
            started = time.perf_counter()
            per_seed.append(run_one(args, method, seed, args.logs))
            print(f"{method} seed {seed}: {per_seed[-1]:.2f} % ({time.perf_counter() - started:.0f} s)", flush=True)
        std = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
        table[method] = {"mean": round(statistics.mean(per_seed), 2), "std": round(std, 2), "per_seed": per_seed}
        print(f"{method}: {table[method]['mean']:.2f} +- {table[method]['std']:.2f} %", flush=True)
    print(json.dumps({"table": table, "seeds": args.seeds}))


if __name__ == "__main__":
    main()
