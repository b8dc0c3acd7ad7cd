"""SparCL at reduced scale on real data: Split MNIST (class-IL, 5 tasks x 2 classes), small CNN.

One command, every arm x 3 seeds, a table (mean +- std) and a plot of accuracy vs training FLOPs:

    SPARSEFORGE_DATA_DIR=/path/to/data python experiments/sparcl_reduced/run.py [--seeds 0 1 2]

Full MNIST must be under $SPARSEFORGE_DATA_DIR/MNIST/raw. Reductions against the paper's setup,
so that the whole run fits in ~30 minutes on 2 shared CPU cores:

- data: ``--train-per-task`` training examples per task (default 500, 250 per class, the same
  seeded subset for every arm and seed); the full 10k test set;
- model: SmallCNN with channels 16/32/64 (3 conv+BN+ReLU+max-pool stages, global pooling,
  linear head). Sparse layers: the second and third conv (``features.4``, ``features.8``, 96% of
  the forward FLOPs); the stem conv, BN and the classifier stay dense, as in SparCL's ResNet-18;
- epochs: 10 per task instead of 50, and SparCL's epoch schedule scaled with it: TDM every 2
  epochs (not 5) with phases [2, 8] (epoch 0: +1% capacity, epoch 2: back to the target, epochs
  4 and 6: swap 1%, epochs 8-9 frozen); DDR at epochs 2 and 4 (not 5/10/15/20), 15% each, 30% in
  total (the release removes its 30% within the first 40% of the task, as here); DGM unchanged
  (every 30 steps, 80% of the active weights; at density 0.10 gradient_sparsity 0.92 keeps that);
- everything else is the release: DER++ alpha 0.1 / beta 0.5, buffer 500, SGD lr 0.03 without
  momentum or weight decay, batch 32, restricted current-task CE, no replay during the first task.

Arms (``--arms``): DER++ dense; DER++ dense with SparCL's loss (restricted CE, no first-task
replay: isolates the loss change); SparCL at sparsity 0.75 and 0.90; DER++ with a static random
mask (uniform, same layers) at 0.75 and 0.90; SparCL 0.75 without TDM, without DDR, without DGM.
Seeds are the outer loop, so the arms interleave and machine-load drift hits them alike.

Columns: class-IL average accuracy, task-IL accuracy, forgetting, training FLOPs relative to
dense DER++ (``flops.train_relative_to_dense``: the counterfactual dense DER++ run with the same
epochs and buffer, checked here against the dense arm's measured FLOPs), training wall time
(fit minus evaluation; masks do not speed up dense kernels, so this is not a speed claim).
Writes results.json, results.md and accuracy_vs_flops.png to ``--out``; the LAST stdout line is
one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SPARSE_LAYERS = "sparsity.include=[features.4,features.8]"
SPARCL = [
    "method=sparcl",
    "sparsity=sparcl",
    SPARSE_LAYERS,
    "sparsity.tdm.every_epochs=2",
    "sparsity.tdm.phase_epochs=[2,8]",
    "method.ddr.removal_epochs=[2,4]",
]
DERPP = ["method=derpp", "method.alpha=0.1", "method.beta=0.5"]
STATIC = ["sparsity=static", "sparsity.distribution=uniform", "sparsity.placement=random", SPARSE_LAYERS]

ARMS: dict[str, tuple[str, list[str]]] = {
    "derpp_dense": ("DER++ dense", [*DERPP, "sparsity=dense"]),
    "derpp_dense_sparcl_loss": (
        "DER++ dense, SparCL's loss",
        ["method=sparcl", "sparsity=dense", "method.ddr.enabled=false", "method.dgm.enabled=false"],
    ),
    "sparcl_75": ("SparCL 0.75", [*SPARCL, "sparsity.density=0.25"]),
    "sparcl_90": ("SparCL 0.90", [*SPARCL, "sparsity.density=0.10", "method.dgm.gradient_sparsity=0.92"]),
    "static_75": ("DER++ static random 0.75", [*DERPP, *STATIC, "sparsity.density=0.25"]),
    "static_90": ("DER++ static random 0.90", [*DERPP, *STATIC, "sparsity.density=0.10"]),
    "sparcl_75_no_tdm": ("SparCL 0.75 w/o TDM", [*SPARCL, "sparsity.density=0.25", "sparsity.update_rule=static"]),
    "sparcl_75_no_ddr": ("SparCL 0.75 w/o DDR", [*SPARCL, "sparsity.density=0.25", "method.ddr.enabled=false"]),
    "sparcl_75_no_dgm": ("SparCL 0.75 w/o DGM", [*SPARCL, "sparsity.density=0.25", "method.dgm.enabled=false"]),
}


def common(data_dir: str, seed: int, epochs: int) -> list[str]:
    return [
        "dataset=mnist",
        f"paths.data_dir={data_dir}",
        "dataset.download=false",
        "model=small_cnn",
        "model.channels=[16,32,64]",
        "scenario=class_il",
        "scenario.n_tasks=5",
        f"scenario.epochs_per_task={epochs}",
        "optimizer=sgd",
        "optimizer.lr=0.03",
        "optimizer.momentum=0.0",
        "optimizer.weight_decay=0.0",
        "lr_scheduler=none",
        "method.buffer_size=500",
        "data.batch_size=32",
        "data.drop_last=true",
        "data.eval_batch_size=1000",
        "logger=none",
        "callbacks=none",
        "task_loop.heatmap=false",
        "sparsity.plot=false",
        "trainer.enable_progress_bar=false",
        "hardware=cpu",
        f"seed={seed}",
    ]


def subsample(tasks, per_task: int, seed: int = 0):
    """The same class-balanced subset of every task's training examples for every run."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for task in tasks:
        per_class = per_task // len(task.classes)
        keep = []
        for c in task.classes:
            members = task.train_index[_labels[task.train_index] == c]
            keep.append(members[torch.randperm(len(members), generator=g)[:per_class]])
        out.append(dataclasses.replace(task, train_index=torch.sort(torch.cat(keep)).values))
    return out


_labels = None


def run_arm(arm: str, seed: int, args, out: Path) -> dict:
    global _labels
    from sparseforge.train import build, collect_summary
    from tests.helpers.config import compose_config

    run_dir = out / "runs" / f"{arm}_seed{seed}"
    done = run_dir / "result.json"
    if done.exists() and not args.rerun:
        return json.loads(done.read_text())
    cfg = compose_config([*common(args.data_dir, seed, args.epochs), *ARMS[arm][1]], run_dir)
    run = build(cfg)
    dm = run.datamodule
    _labels = dm.train_data.y
    dm.tasks = subsample(dm.tasks, args.train_per_task)
    start = time.perf_counter()
    run.trainer.fit(run.method, datamodule=dm)
    fit_s = time.perf_counter() - start
    summary = collect_summary(run)
    cl, flops = summary["cl"], summary["flops"]
    result = {
        "arm": arm,
        "seed": seed,
        "avg_acc": cl["avg_acc"],
        "avg_acc_task_il": cl["avg_acc_task_il"],
        "forgetting": cl["forgetting"],
        "acc_matrix": cl["acc_matrix"],
        "flops_rel": flops["train_relative_to_dense"],
        "flops_train": flops["train_total"],
        "flops_reference": flops["train_dense_total"],
        "samples_trained": flops["samples_trained"],
        "samples_reference_only": flops["samples_reference_only"],
        "density": summary["sparsity"]["density"],
        "model_density": summary["sparsity"]["model_density"],
        "train_s": fit_s - cl["eval_seconds"],
        "fit_s": fit_s,
        "sparcl": {k: summary["sparcl"][k] for k in ("ddr", "dgm", "reference_only_samples")}
        if "sparcl" in summary
        else None,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result, indent=1))
    return result


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(results: list[dict], arms: list[str]) -> tuple[dict, str]:
    rows, figures = [], {}
    header = (
        "| arm | class-IL acc (%) | task-IL acc (%) | forgetting (pts) | train FLOPs / dense DER++ | train time (s) |\n"
        "|---|---|---|---|---|---|"
    )
    for arm in arms:
        rs = [r for r in results if r["arm"] == arm]
        if not rs:
            continue
        stats = {
            "avg_acc": mean_std([100 * r["avg_acc"] for r in rs]),
            "avg_acc_task_il": mean_std([100 * r["avg_acc_task_il"] for r in rs]),
            "forgetting": mean_std([100 * r["forgetting"] for r in rs]),
            "flops_rel": mean_std([r["flops_rel"] for r in rs]),
            "train_s": mean_std([r["train_s"] for r in rs]),
        }
        figures[arm] = {k: {"mean": m, "std": s} for k, (m, s) in stats.items()} | {"seeds": len(rs)}
        a, t, f, fl, w = (stats[k] for k in ("avg_acc", "avg_acc_task_il", "forgetting", "flops_rel", "train_s"))
        rows.append(
            f"| {ARMS[arm][0]} | {a[0]:.2f} ± {a[1]:.2f} | {t[0]:.2f} ± {t[1]:.2f} | {f[0]:.2f} ± {f[1]:.2f} "
            f"| {fl[0]:.3f} ± {fl[1]:.3f} (×{1 / fl[0]:.1f} fewer) | {w[0]:.0f} ± {w[1]:.0f} |"
        )
    return figures, "\n".join([header, *rows])


def plot(figures: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, f in figures.items():
        x, y = f["flops_rel"], f["avg_acc"]
        marker = "o" if arm.startswith("sparcl") else ("s" if arm.startswith("static") else "D")
        ax.errorbar(x["mean"], y["mean"], xerr=x["std"], yerr=y["std"], fmt=marker, capsize=3, label=ARMS[arm][0])
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs relative to dense DER++ (log)")
    ax.set_ylabel("class-IL average accuracy (%)")
    ax.set_title("Split MNIST (5 tasks), small CNN: mean ± std over seeds")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--train-per-task", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=10, help="per task (the SparCL schedule above assumes 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a shared box)")
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "sparcl_reduced" / "results")
    parser.add_argument("--rerun", action="store_true", help="ignore finished runs under --out")
    args = parser.parse_args()
    args.data_dir = os.environ.get("SPARSEFORGE_DATA_DIR")
    if not args.data_dir or not (Path(args.data_dir) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        raise SystemExit("set SPARSEFORGE_DATA_DIR to a folder holding MNIST/raw (full MNIST)")
    sys.path.insert(0, str(REPO))
    import logging

    import torch

    from sparseforge.utils.logging import tidy_console

    torch.set_num_threads(args.threads)
    tidy_console()
    for name in ("lightning.pytorch", "lightning.fabric"):  # per-run Trainer chatter
        logging.getLogger(name).setLevel(logging.ERROR)
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.time()
    results = []
    for seed in args.seeds:
        for arm in args.arms:
            r = run_arm(arm, seed, args, args.out)
            results.append(r)
            print(
                f"{arm:24s} seed {seed}: class-IL {100 * r['avg_acc']:.2f}%  task-IL {100 * r['avg_acc_task_il']:.2f}%  "
                f"forgetting {100 * r['forgetting']:.2f}  FLOPs {r['flops_rel']:.3f}  train {r['train_s']:.0f} s",
                flush=True,
            )
    # The counterfactual reference of every run must be the dense DER++ arm's measured FLOPs.
    checks = []
    for r in results:
        dense = next((d for d in results if d["arm"] == "derpp_dense" and d["seed"] == r["seed"]), None)
        if dense is not None:
            checks.append(abs(r["flops_reference"] / dense["flops_train"] - 1))
    figures, md = table(results, args.arms)
    plot(figures, args.out / "accuracy_vs_flops.png")
    (args.out / "results.md").write_text(md + "\n")
    (args.out / "results.json").write_text(json.dumps({"figures": figures, "runs": results}, indent=1))
    print(md)
    print(
        json.dumps(
            {
                "setup": {"train_per_task": args.train_per_task, "epochs_per_task": args.epochs, "seeds": args.seeds},
                "figures": figures,
                "reference_max_rel_error": max(checks) if checks else None,
                "total_s": time.time() - start,
            }
        )
    )


if __name__ == "__main__":
    main()
