"""Framework overhead: training steps/s through sparseforge (Hydra config -> train.build ->
Lightning Trainer, datamodule, method, callbacks, CSV logger, progress bar) against a
hand-written PyTorch loop on the same model (small CNN), the same 28x28 data and batch size.

The two are measured side by side in one process and interleaved step by step: after every
Lightning training step, one step of the hand-written loop, so the drift of a shared machine
hits both alike. Steps/s of each variant = measured steps / their summed time; the per-task
evaluation at the end of the run is not a training step and is not counted. Also measured:
the time from launching ``python train.py`` to its first training step, in fresh subprocesses.

    python experiments/bench_framework_overhead.py            # MNIST from $SPARSEFORGE_DATA_DIR
    python experiments/bench_framework_overhead.py --repeats 5 --steps 100

The last stdout line is one JSON object with the figures.
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
FIRST_STEP_ENV = "SPARSEFORGE_BENCH_FIRST_STEP_FILE"


def first_step_clock():
    """A Lightning callback (added with +callbacks.first_step_clock._target_=...) that writes the
    wall-clock time of the first training step to $SPARSEFORGE_BENCH_FIRST_STEP_FILE. Built
    lazily: importing this module must not change what the measured process imports."""
    import lightning.pytorch as pl

    class FirstStepClock(pl.Callback):
        done = False

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if not self.done:
                self.done = True
                Path(os.environ[FIRST_STEP_ENV]).write_text(repr(time.time()))

    return FirstStepClock()


def _data(data_dir: str | None):
    """MNIST's training images (uint8) when available, else random 28x28 images in its place."""
    if data_dir and (Path(data_dir) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        from sparseforge.data import MNIST

        train = MNIST(data_dir, download=False).load(train=True)
        return "mnist", data_dir, train.x, train.y
    tmp = Path(tempfile.mkdtemp(prefix="sf-bench-"))
    sys.path.insert(0, str(REPO))
    from tests.helpers.fake_data import write_mnist_like

    write_mnist_like(tmp, "MNIST", n_train=20000, n_test=1000)
    from sparseforge.data import MNIST

    train = MNIST(tmp, download=False).load(train=True)
    return "random 28x28 in MNIST's files", str(tmp), train.x, train.y


class HandLoop:
    """The baseline: index a uint8 tensor, normalise, forward, backward, SGD step."""

    def __init__(self, x, y, batch_size: int, seed: int):
        import torch

        from sparseforge.models import create_model

        torch.manual_seed(seed)
        self.x, self.y, self.batch_size = x, y, batch_size
        self.model = create_model("small_cnn", num_classes=10, in_chans=1, image_size=28)
        self.model.train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        self.generator = torch.Generator().manual_seed(seed)

    def new_epoch(self) -> None:
        import torch

        self.perm = torch.randperm(len(self.y), generator=self.generator)
        self.position = 0

    def step(self) -> float:
        """One training step; returns its wall time in seconds."""
        import torch.nn.functional as F

        from sparseforge.data import MNIST

        start = time.perf_counter()
        idx = self.perm[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        x = (self.x[idx].float().div_(255.0) - MNIST.mean[0]) / MNIST.std[0]
        loss = F.cross_entropy(self.model(x), self.y[idx])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        loss.item()  # as Lightning's progress bar does: wait for the step to finish
        return time.perf_counter() - start


def measure_overhead(repeats: int, steps: int, batch_size: int, logger: str, progress_bar: bool) -> dict:
    import lightning.pytorch as pl

    from sparseforge.compose import compose_run_config
    from sparseforge.train import build

    source, data_dir, x, y = _data(os.environ.get("SPARSEFORGE_DATA_DIR"))
    if len(y) < steps * batch_size:
        raise SystemExit(f"need {steps * batch_size} images for {steps} steps, have {len(y)}")
    out = Path(tempfile.mkdtemp(prefix="sf-bench-run-"))
    overrides = [
        "dataset=mnist",
        f"paths.data_dir={data_dir}",
        "model=small_cnn",
        "scenario=iid",
        "sparsity=dense",
        "method=finetune",
        "optimizer=sgd",
        "lr_scheduler=none",  # what the hand-written loop does
        f"scenario.epochs_per_task={repeats + 1}",  # +1: the first epoch is warm-up
        f"data.batch_size={batch_size}",
        f"trainer.limit_train_batches={steps}",
        f"logger={logger}",
        "task_loop.eval_limit_batches=1",
        f"trainer.enable_progress_bar={str(progress_bar).lower()}",
        "print_config=false",
    ]
    cfg = compose_run_config(overrides, out)
    run = build(cfg)

    hand = HandLoop(x, y, batch_size, seed=0)
    times = {"sparseforge": [], "hand_loop": []}

    class Interleave(pl.Callback):
        """Alternates single steps: after each Lightning step, one hand-written step.

        A Lightning step is the time from the end of the previous hand step to the end of this
        batch (data loading, transfer, transform, forward, backward, optimizer, logging, progress
        bar and the other callbacks' hooks all fall inside). Step-level alternation cancels the
        drift of a shared machine far better than alternating whole epochs."""

        def on_train_epoch_start(self, trainer, pl_module):
            hand.new_epoch()
            self.mark = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            lightning_s = time.perf_counter() - self.mark
            hand_s = hand.step()
            if trainer.current_epoch > 0:  # epoch 0 warms both up
                times["sparseforge"].append(lightning_s)
                times["hand_loop"].append(hand_s)
            self.mark = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch > 0:
                n = steps
                sf, hd = sum(times["sparseforge"][-n:]), sum(times["hand_loop"][-n:])
                print(
                    f"epoch {trainer.current_epoch}: sparseforge {n / sf:.2f} steps/s, hand loop {n / hd:.2f} "
                    f"steps/s, ratio {sf / hd:.3f}",
                    file=sys.stderr,
                    flush=True,
                )

    run.trainer.callbacks.insert(0, Interleave())  # first: the others' batch-end hooks count as Lightning
    run.trainer.fit(run.method, datamodule=run.datamodule)

    sf_total, hand_total = sum(times["sparseforge"]), sum(times["hand_loop"])
    n = len(times["sparseforge"])
    per_step = sorted(a / b for a, b in zip(times["sparseforge"], times["hand_loop"], strict=True))
    return {
        "data": source,
        "logger": logger,
        "progress_bar": progress_bar,
        "batch_size": batch_size,
        "measured_steps": n,
        "sparseforge_steps_per_s": round(n / sf_total, 3),
        "hand_loop_steps_per_s": round(n / hand_total, 3),
        "sparseforge_ms_per_step": round(1000 * sf_total / n, 2),
        "hand_loop_ms_per_step": round(1000 * hand_total / n, 2),
        "overhead_ratio": round(sf_total / hand_total, 4),  # = hand-loop steps/s over sparseforge steps/s
        "overhead_ratio_median_step": round(statistics.median(per_step), 4),
    }


def time_to_first_step(args: list[str], runs: int) -> dict:
    """Seconds from launching ``python train.py ARGS`` to its first training step (median)."""
    samples = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="sf-bench-ttfs-") as tmp:
            stamp = Path(tmp) / "first_step"
            env = {**os.environ, FIRST_STEP_ENV: str(stamp), "SPARSEFORGE_ROOT": tmp}
            clock = "+callbacks.first_step_clock._target_=experiments.bench_framework_overhead.first_step_clock"
            cmd = [sys.executable, str(REPO / "train.py"), *args, clock, "print_config=false"]
            start = time.time()
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0 or not stamp.exists():
                raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
            samples.append(float(stamp.read_text()) - start)
    return {"args": args, "median_s": round(statistics.median(samples), 3), "samples_s": [round(s, 3) for s in samples]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="measured epochs (after 1 warm-up epoch)")
    p.add_argument("--steps", type=int, default=50, help="training steps per epoch, for each variant")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=int(os.environ.get("SPARSEFORGE_BENCH_THREADS", 2)))
    p.add_argument("--startup-runs", type=int, default=3)
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    overhead = measure_overhead(a.repeats, a.steps, a.batch_size, logger="csv", progress_bar=True)
    print(
        f"framework overhead (small CNN, 28x28, batch {a.batch_size}): "
        f"sparseforge {overhead['sparseforge_steps_per_s']} steps/s, hand loop {overhead['hand_loop_steps_per_s']} "
        f"steps/s, ratio {overhead['overhead_ratio']} (must be <= 1.10)"
    )
    startup = {}
    if a.startup_runs > 0:
        startup["default"] = time_to_first_step([], a.startup_runs)
        startup["default_csv_logger"] = time_to_first_step(["logger=csv"], a.startup_runs)
    for s in startup.values():
        print(
            f"python train.py {' '.join(s['args'])} -> first training step: {s['median_s']} s (median of {len(s['samples_s'])})"
        )
    figures = {
        "benchmark": "framework_overhead",
        "torch_threads": a.threads,
        "overhead": overhead,
        "overhead_ratio": overhead["overhead_ratio"],
        "overhead_within_limit": overhead["overhead_ratio"] <= 1.10,
        "time_to_first_step_s": {k: v["median_s"] for k, v in startup.items()},
        "time_to_first_step": startup,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
