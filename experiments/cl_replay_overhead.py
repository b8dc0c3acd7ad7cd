"""Replay overhead and evaluation share, measured side by side in one process.

1. Step cost. For each model (the Split-MNIST MLP and the small CNN) the variants finetune,
   ER, ER-ACE and DER++ (buffer 500, replay draws as large as the batch) train 2 tasks of Split MNIST
   through the real stack (config -> train.build -> Lightning). Variants run in rounds, one short
   fit each, interleaved, so machine drift hits them alike. The step cost is the median time
   between consecutive training-batch ends in task 1, where the buffer is full and replay is on
   (it covers loading, transfer, augmentation, forward, backward, optimizer step, buffer draw,
   re-augmentation and insertion). Besides finetune at the same batch size, finetune is also
   timed at 2x and 3x the batch: ER and ER-ACE forward 2x and DER++ 3x as many examples per step, so those
   ratios isolate what the buffer machinery itself costs. Ratios are paired within a round (same
   machine load) and the median over rounds is reported.
2. Buffer bookkeeping alone: ``add`` of a batch + ``sample`` + re-augmentation, per step.
3. Evaluation share: complete Split-MNIST runs (5 tasks, 1 epoch each); the task loop's
   ``eval_seconds`` (evaluating every seen task after each task) over its ``fit_seconds``.

    SPARSEFORGE_DATA_DIR=/path/to/data python experiments/cl_replay_overhead.py [--rounds 3]

The runs use the preset's ``hardware=auto``: on a machine with a CUDA GPU they train on it
(bf16-mixed), and the JSON's ``device`` names the card. The last stdout line is one JSON object
with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: tiny ops on a shared CPU
REPO = Path(__file__).resolve().parents[1]

# The variants whose quality is measured: the arms of the study cl_split_mnist (buffer 500; DER++
# with alpha 1.0, beta 0.5), configs/arm/cl_split_mnist/.
METHODS = {variant: [f"arm=cl_split_mnist/{variant}"] for variant in ("finetune", "er", "er_ace", "derpp")}

# The preset sets model.hidden_sizes (an MLP argument): drop it for the CNN.
MODELS = {"mlp": ["model=mlp", "model.hidden_sizes=[100,100]"], "small_cnn": ["model=small_cnn", "~model.hidden_sizes"]}


def common(batch_size: int) -> list[str]:
    return [
        "+experiment=split_mnist",
        "sparsity=dense",
        "logger=none",
        "callbacks=none",
        "task_loop.heatmap=false",
        "print_config=false",
        "trainer.enable_progress_bar=false",
        f"data.batch_size={batch_size}",
    ]


def step_times(model: str, variant: str, batch_size: int, steps: int, out: Path) -> list[float]:
    """Seconds between consecutive batch ends in task 1 of a 2-task fit."""
    import lightning.pytorch as pl

    from sparseforge.compose import compose_run_config
    from sparseforge.train import build

    ends: list[float] = []

    class Clock(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1:
                ends.append(time.perf_counter())

    overrides = [
        *common(batch_size),
        *MODELS[model],
        *METHODS[variant],
        "trainer.max_epochs=2",
        f"trainer.limit_train_batches={steps}",
        "task_loop.eval_limit_batches=1",
    ]
    cfg = compose_run_config(overrides, out / f"{model}_{variant}_{batch_size}_{time.time_ns()}")
    run = build(cfg)
    run.trainer.callbacks.insert(0, Clock())
    run.trainer.fit(run.method, datamodule=run.datamodule)
    return [b - a for a, b in zip(ends, ends[1:], strict=False)]


def buffer_bookkeeping(batch_size: int, repeats: int = 300) -> dict:
    """Per-step cost of the buffer alone on MNIST-shaped data (add + sample + re-augment)."""
    import torch

    from sparseforge.continual.buffer import ReplayBuffer
    from sparseforge.data import MNIST
    from sparseforge.data.transforms import DeviceTransform

    out = {}
    transform = DeviceTransform(MNIST.mean, MNIST.std)
    for policy in ("reservoir", "class_balanced"):
        buffer = ReplayBuffer(500, policy=policy, store_logits=True, seed=0)
        g = torch.Generator().manual_seed(0)
        raw = torch.randint(0, 255, (repeats + 20, batch_size, 1, 28, 28), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 10, (repeats + 20, batch_size), generator=g)
        logits = torch.randn(batch_size, 10)
        task = torch.zeros(batch_size, dtype=torch.long)
        for i in range(20):  # warm-up, fills the buffer
            buffer.add(raw[i], y[i], task, logits)
        start = time.perf_counter()
        for i in range(20, repeats + 20):
            drawn = buffer.sample(batch_size)
            transform(drawn.raw, train=True)
            buffer.add(raw[i], y[i], task, logits)
        out[policy] = (time.perf_counter() - start) / repeats * 1000
    return out


def eval_share(variant: str, out: Path) -> dict:
    from sparseforge.compose import compose_run_config
    from sparseforge.train import train

    cfg = compose_run_config([*common(32), *METHODS[variant]], out / f"eval_share_{variant}")
    train(cfg)
    cl = train.last_summary["cl"]
    return {"eval_seconds": cl["eval_seconds"], "fit_seconds": cl["fit_seconds"], "eval_share": cl["eval_share"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=80, help="steps per task in the timed fits")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--skip-eval-share", action="store_true")
    args = p.parse_args()
    if not os.environ.get("SPARSEFORGE_DATA_DIR"):
        raise SystemExit("set SPARSEFORGE_DATA_DIR to a folder holding MNIST/raw")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    out = Path(tempfile.mkdtemp(prefix="cl_overhead_"))
    b = args.batch_size
    variants = [("finetune", b), ("er", b), ("er_ace", b), ("derpp", b), ("finetune", 2 * b), ("finetune", 3 * b)]
    figures: dict = {
        "batch_size": b,
        "steps_per_task": args.steps,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        # hardware=auto (the preset's default) trains on a CUDA GPU when one is visible
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "models": {},
    }
    for model in args.models:
        per_round: list[dict[str, float]] = []  # median step (ms) of every variant, per round
        for r in range(args.rounds):
            medians = {}
            for variant, bs in variants:  # interleaved: every round runs every variant once
                medians[f"{variant}@{bs}"] = 1000 * statistics.median(step_times(model, variant, bs, args.steps, out))
            per_round.append(medians)
            print(
                f"{model} round {r}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in medians.items()),
                file=sys.stderr,
                flush=True,
            )

        def ratio(a: str, c: str, per_round=per_round) -> dict:
            # paired within a round (same machine load), then the median over rounds
            pairs = [m[a] / m[c] for m in per_round]
            return {"median": round(statistics.median(pairs), 3), "per_round": [round(x, 3) for x in pairs]}

        ms = {k: statistics.median(m[k] for m in per_round) for k in per_round[0]}
        figures["models"][model] = {
            "median_step_ms": {k: round(v, 3) for k, v in ms.items()},
            "er_over_finetune_same_batch": ratio(f"er@{b}", f"finetune@{b}"),
            "er_ace_over_finetune_same_batch": ratio(f"er_ace@{b}", f"finetune@{b}"),
            "derpp_over_finetune_same_batch": ratio(f"derpp@{b}", f"finetune@{b}"),
            "er_over_finetune_same_examples": ratio(f"er@{b}", f"finetune@{2 * b}"),
            "er_ace_over_finetune_same_examples": ratio(f"er_ace@{b}", f"finetune@{2 * b}"),
            "derpp_over_finetune_same_examples": ratio(f"derpp@{b}", f"finetune@{3 * b}"),
        }
        print(f"{model}: median step " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()))
        print(
            f"{model}: "
            + ", ".join(f"{k} {v['median']}" for k, v in figures["models"][model].items() if k != "median_step_ms")
        )
    figures["buffer_bookkeeping_ms_per_step"] = {k: round(v, 3) for k, v in buffer_bookkeeping(b).items()}
    print(f"buffer add + sample + re-augment per step: {figures['buffer_bookkeeping_ms_per_step']}")
    if not args.skip_eval_share:
        figures["eval_share_split_mnist_mlp"] = {v: eval_share(v, out) for v in METHODS}
        for v, e in figures["eval_share_split_mnist_mlp"].items():
            print(
                f"evaluation share, Split MNIST {v}: {100 * e['eval_share']:.1f}% "
                f"({e['eval_seconds']:.1f} s of {e['fit_seconds']:.1f} s)"
            )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
