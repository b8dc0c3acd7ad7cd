"""Cost of the in-memory fast path, this checkout against an older one, in one process.

The older checkout's package is copied under another name (``sparseforge_old``) so that both
datamodules run side by side on the same CIFAR-shaped uint8 data (random pixels; no files). Per
arm and round, each of these is timed over many repetitions, arms interleaved:

- ``train_batch``: the training loader's next batch plus ``on_after_batch_transfer`` (slicing,
  random crop + flip, normalisation) at batch 32;
- ``replay_augment``: ``augment`` of a 32-example buffer draw;
- ``eval_preprocess``: preprocessing of a 512-example evaluation batch.

One thread (``torch.set_num_threads(1)``); process CPU time and wall clock are both recorded, the
arm that goes first alternates between rounds, ratios are paired within a round and their
median over rounds is reported, and the last stdout line is one JSON object with the new/old
ratios (1.0 = as fast).

    PYTHONPATH=$PWD/src python experiments/bench_data_pipeline.py --old-src /path/to/old/src [--rounds 7]
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch


def import_renamed(src: Path, into: Path, name: str):
    """The ``sparseforge`` package under ``src`` importable as ``name`` (imports rewritten)."""
    target = into / name
    shutil.copytree(src / "sparseforge", target)
    for path in target.rglob("*.py"):
        text = path.read_text()
        path.write_text(text.replace("sparseforge.", f"{name}.").replace("from sparseforge ", f"from {name} "))
    sys.path.insert(0, str(into))
    return importlib.import_module(name)


def datamodule(pkg_name: str, x: torch.Tensor, y: torch.Tensor):
    data = importlib.import_module(f"{pkg_name}.data")
    base = importlib.import_module(f"{pkg_name}.data.base")
    scenarios = importlib.import_module(f"{pkg_name}.continual.scenarios")
    dm_module = importlib.import_module(f"{pkg_name}.lightning.datamodule")

    class InMemory(data.CIFAR10):
        def _load(self, train):
            return base.ImageTensors(x, y) if train else base.ImageTensors(x[:512], y[:512])

    kwargs = {}
    try:  # this checkout: the crop and flip come from the config
        transforms = importlib.import_module(f"{pkg_name}.data.transforms")
        kwargs["train_transform"] = [transforms.RandomCropFlip(4, True)]
    except AttributeError:
        pass
    dataset = InMemory("/nonexistent", download=False, **kwargs)
    dm = dm_module.ContinualDataModule(dataset, scenarios.IID(), batch_size=32, seed=0)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(training=True)
    return dm


def timed(fn, repeats: int) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.process_time() - cpu) / repeats, (time.perf_counter() - wall) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old-src", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (5000, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (5000,), generator=g)
    with tempfile.TemporaryDirectory() as tmp:
        import_renamed(args.old_src, Path(tmp), "sparseforge_old")
        built = {"old": datamodule("sparseforge_old", x, y), "new": datamodule("sparseforge", x, y)}
        draw, eval_raw = x[:32], x[:512]
        results = {arm: {k: [] for k in ("train_batch", "replay_augment", "eval_preprocess")} for arm in built}
        for r in range(args.rounds):
            # alternate which arm goes first: the second one in a round may find warmer caches
            for arm in ("old", "new") if r % 2 == 0 else ("new", "old"):
                dm = built[arm]
                batches = iter(dm.train_loader_for(torch.arange(len(y)), epoch=0))

                def train_batch(dm=dm, batches=batches):
                    dm.on_after_batch_transfer(next(batches), 0)

                for op, fn in (
                    ("train_batch", train_batch),
                    ("replay_augment", lambda dm=dm: dm.augment(draw)),
                    ("eval_preprocess", lambda dm=dm: dm.preprocess_eval(eval_raw)),
                ):
                    repeats = min(args.repeats, len(y) // 32 - 1) if op == "train_batch" else args.repeats
                    results[arm][op].append(timed(fn, repeats))
    summary = {}
    for op in results["new"]:
        new_cpu = statistics.median(c for c, _ in results["new"][op])
        old_cpu = statistics.median(c for c, _ in results["old"][op])
        new_wall = statistics.median(w for _, w in results["new"][op])
        old_wall = statistics.median(w for _, w in results["old"][op])
        # ratios paired within a round (the same machine load), median over rounds
        pairs = list(zip(results["old"][op], results["new"][op], strict=True))
        cpu_ratio = statistics.median(n[0] / o[0] for o, n in pairs)
        wall_ratio = statistics.median(n[1] / o[1] for o, n in pairs)
        summary[op] = {
            "old_cpu_us": round(old_cpu * 1e6, 1),
            "new_cpu_us": round(new_cpu * 1e6, 1),
            "old_wall_us": round(old_wall * 1e6, 1),
            "new_wall_us": round(new_wall * 1e6, 1),
            "cpu_ratio": round(cpu_ratio, 3),
            "wall_ratio": round(wall_ratio, 3),
        }
        print(f"{op:16s} old {old_cpu * 1e6:8.1f} us  new {new_cpu * 1e6:8.1f} us CPU  paired ratio {cpu_ratio:.3f}")
    print(json.dumps({"threads": 1, "rounds": args.rounds, "ops": summary}))


if __name__ == "__main__":
    main()
