"""Mammoth's own methods on seq-mnist (its best arguments, buffer 500 where there is one), per seed: the
reference side of ``mammoth_parity_seq_mnist.py``.

Runs an aimagelab/mammoth checkout's ``main.py`` once per method and seed, one after another, on
the CPU with one intra-op thread, and reads the final class-IL and task-IL average accuracy from
its log ("Accuracy for 5 task(s): [Class-IL]: ... [Task-IL]: ..."). Mammoth needs MNIST's raw files under
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

# utils/best_args.py, best_args['seq-mnist'][method][500] (-1 for the methods without a buffer);
# batch 10, 1 epoch per task.
BEST_ARGS = {
    "er": ["--buffer_size", "500", "--lr", "0.1", "--minibatch_size", "10"],
    "derpp": ["--buffer_size", "500", "--lr", "0.03", "--minibatch_size", "10", "--alpha", "1.0", "--beta", "0.5"],
    "ewc_on": ["--lr", "0.03", "--e_lambda", "90", "--gamma", "1.0"],
    "si": ["--lr", "0.1", "--c", "1.0", "--xi", "0.9"],
    "lwf": ["--lr", "0.03", "--alpha", "1", "--softmax_temp", "2.0", "--optim_wd", "0.0005"],
    "icarl": ["--buffer_size", "500", "--lr", "0.1", "--minibatch_size", "10", "--optim_wd", "0"],
    "agem": ["--buffer_size", "500", "--lr", "0.1", "--minibatch_size", "128"],
}
FINAL = re.compile(r"Accuracy for 5 task\(s\):\s+\[Class-IL\]: ([0-9.]+) %\s+\[Task-IL\]: ([0-9.]+) %")


def run_one(args, method: str, seed: int, log_dir: Path) -> tuple[float, float]:
    """(class-IL, task-IL) average accuracy after the last task, in %."""
    command = [
        args.python,
        "main.py",
        "--dataset", "seq-mnist",
        "--model", method,
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
        raise RuntimeError(f"no final accuracy in {log}")
    class_il, task_il = found[-1]
    return float(class_il), float(task_il)


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
        per_seed, task_il = [], []
        for seed in args.seeds:
            started = time.perf_counter()
            class_il, til = run_one(args, method, seed, args.logs)
            per_seed.append(class_il)
            task_il.append(til)
            print(f"{method} seed {seed}: {class_il:.2f} % ({time.perf_counter() - started:.0f} s)", flush=True)
        std = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
        table[method] = {
            "mean": round(statistics.mean(per_seed), 2),
            "std": round(std, 2),
            "per_seed": per_seed,
            "task_il_per_seed": task_il,
        }
        print(f"{method}: {table[method]['mean']:.2f} +- {table[method]['std']:.2f} %", flush=True)
    print(json.dumps({"table": table, "seeds": args.seeds}))


if __name__ == "__main__":
    main()
