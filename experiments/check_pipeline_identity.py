"""Same seed, same numbers: the accuracy matrices of a set of small runs, to compare two checkouts.

Each case trains through the real config and ``train()`` on tiny files in the datasets' real
formats (``tests/helpers/fake_data.py``) or on the bundled digits: in-memory datasets with and
without the CIFAR crop+flip, every replay method, SHARP and SparCL. The script prints one JSON
object mapping each case to its class-IL accuracy matrix, final training loss and replay bytes.
Run it once with each checkout's ``src`` first on PYTHONPATH and compare the two lines:

    PYTHONPATH=/path/to/old/src:. python experiments/check_pipeline_identity.py > old.json
    PYTHONPATH=$PWD/src:. python experiments/check_pipeline_identity.py > new.json
    python experiments/check_pipeline_identity.py --compare old.json new.json

Configs come from the checkout that ``sparseforge`` is imported from (``config_dir()``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUIET = ["logger=none", "callbacks=none", "task_loop.heatmap=false", "print_config=false"]
QUIET += ["trainer.enable_progress_bar=false", "sparsity=dense"]
CIFAR = ["dataset=cifar10", "dataset.verify_checksums=false", "model=small_cnn", "data.batch_size=16"]

# case -> (writer of tiny files or None, overrides)
CASES = {
    "digits_er": (None, ["method=er", "method.buffer_size=100", "scenario.epochs_per_task=2"]),
    "digits_derpp": (None, ["method=derpp", "method.buffer_size=100"]),
    "digits_er_ace_task_il": (None, ["method=er_ace", "method.buffer_size=100", "scenario=task_il"]),
    "digits_joint_blurry": (None, ["method=joint", "scenario=blurry"]),
    "cifar_er_cropflip": ("cifar10", [*CIFAR, "method=er", "method.buffer_size=50", "scenario.epochs_per_task=2"]),
    "cifar_derpp_cropflip": ("cifar10", [*CIFAR, "method=derpp", "method.buffer_size=50"]),
    "cifar_sparcl": (
        "cifar10",
        [*CIFAR, "model=resnet18_cifar", "model.width=8", "method=sparcl", "sparsity=sparcl", "method.buffer_size=50"],
    ),
    "tiny_imagenet_er": (
        "tiny_imagenet",
        ["dataset=tiny_imagenet", "model=small_cnn", "method=er", "method.buffer_size=50", "data.batch_size=32"],
    ),
    "mnist_sharp": (
        "mnist",
        [
            "+experiment=sharp_mnist",
            "scenario.epochs_per_task=2",
            "method.phase_epochs=1",
            "method.max_phases=2",
            "method.selection_samples=64",
            "data.batch_size=16",
            "method.stm_per_class=4",
            "method.ltm_per_class=4",
        ],
    ),
}


def write(kind: str, data_dir: Path) -> None:
    from tests.helpers import fake_data

    if kind == "cifar10":
        fake_data.write_cifar(data_dir, 10)
    elif kind == "tiny_imagenet":
        fake_data.write_tiny_imagenet(data_dir, num_classes=200, per_class_train=2, per_class_val=1)
    elif kind == "mnist":
        fake_data.write_mnist_like(data_dir, "MNIST")


def run_case(name: str, root: Path) -> dict:
    from sparseforge.config.compose import compose_run_config

    from sparseforge.train import train

    writer, overrides = CASES[name]
    data_dir = root / name / "data"
    data_dir.mkdir(parents=True)
    if writer:
        write(writer, data_dir)
    out = root / name / "run"
    cfg = compose_run_config([*QUIET, *overrides, f"paths.data_dir={data_dir}"], output_dir=out)
    cfg.paths.log_dir = str(root / name)
    metrics = train(cfg)
    summary = json.loads((out / "summary.json").read_text())
    return {
        "acc_matrix": summary["cl"]["acc_matrix"],
        "train_loss": metrics.get("train/loss"),
        "replay_bytes": (summary.get("replay") or {}).get("bytes"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"))
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    if args.compare:
        old, new = (json.loads(Path(p).read_text().strip().splitlines()[-1]) for p in args.compare)
        same = {k: old.get(k) == new.get(k) for k in sorted(set(old) | set(new))}
        print(json.dumps({"identical": all(same.values()), "per_case": same}))
        sys.exit(0 if all(same.values()) else 1)
    import sparseforge

    print(f"sparseforge from {Path(sparseforge.__file__).parent}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run_case(name, Path(tmp)) for name in args.cases}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
