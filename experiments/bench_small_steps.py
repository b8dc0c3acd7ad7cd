"""Small-step continual learning: sparseforge against a hand-written PyTorch loop.

Split MNIST (5 tasks of 2 classes, one epoch each) with Mammoth's MLP 784-100-100-10 at batch
10: 6,002 optimizer steps, so the per-step cost of the framework dominates. Three methods with
Mammoth's Split-MNIST settings (plain SGD, no momentum, no weight decay): finetune (lr 0.03), ER
(lr 0.1, buffer 500) and DER++ (lr 0.03, alpha 1.0, beta 0.5, buffer 500); replay draws are as
large as the batch.

Two arms, in one process with one torch thread, run in lock-step so that the load of a shared
machine hits both alike, millisecond by millisecond: after each of sparseforge's training batches
the hand-written loop does one step, and after each of sparseforge's tasks it evaluates and saves
its checkpoint.

- sparseforge: the real stack (config -> ``train.build`` -> Lightning fit) with the settings of
  the command below (CSV logger, progress bar, checkpoint per task, RNG-state saving, FLOPs
  counting, the task loop);
- a hand-written loop in plain PyTorch doing the same work: the same MLP and initial weights, the
  same data order (the permutation sparseforge draws for each epoch), normalisation per batch, a
  fresh SGD per task, the running training loss and accuracy, evaluation (class-IL and task-IL)
  of every seen task after each task, one checkpoint per task (model, optimizer, buffer, RNG) and,
  for ER and DER++, a reservoir buffer written plainly (same draws from a seeded generator).

The "training part" is timed for both, wall clock and process CPU time: each hand piece on its
own, and sparseforge from ``on_train_start`` to ``on_train_end`` (every step, evaluation and
checkpoint; not the final heat map or summary) minus the hand pieces inside. The ratio of the
two is the median over rounds. When the hand loop really does the same work, both arms compute
the same accuracy matrix, bit for bit (``same_accuracy_matrix``).

A third arm shows what Lightning's automatic-optimisation loop alone costs on this work: a bare
LightningModule (the same MLP, normalisation, loss and SGD over the same batches as tuples; no
callbacks, logger, progress bar or checkpoints) in lock-step with the hand loop's training steps;
and the same module with manual optimisation, which bounds what leaving Lightning's
optimisation closure could save. It runs in a fresh process each round, which never imports
sparseforge: Lightning as installed, without the trims ``train.build`` makes to it.

Then the whole process of the command a user types, in a fresh subprocess per round::

    python train.py +experiment=split_mnist sparsity=dense method=finetune optimizer.lr=0.03 \
        optimizer.momentum=0 optimizer.weight_decay=0 data.batch_size=10 logger=csv torch_threads=1

split into start-up (launch to the first training batch), training part and tear-down (last
task's end to exit), plus the import time inside a run (``python -X importtime``, summed over
top-level imports, one extra run).

    SPARSEFORGE_DATA_DIR=/path/to/data python experiments/bench_small_steps.py [--rounds 3]

The last stdout line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch
REPO = Path(__file__).resolve().parents[1]
STAMP_ENV = "SPARSEFORGE_BENCH_STAMPS"

SEED = 0
BATCH = 10
BUFFER = 500
MEAN, STD = 0.1307, 0.3081  # MNIST's
# Mammoth's Split-MNIST settings (utils/best_args.py, buffer 500).
METHODS = {
    "finetune": {"lr": 0.03, "overrides": ["method=finetune"]},
    "er": {"lr": 0.1, "overrides": ["method=er", f"method.buffer_size={BUFFER}"]},
    "derpp": {
        "lr": 0.03,
        "alpha": 1.0,
        "beta": 0.5,
        "overrides": ["method=derpp", f"method.buffer_size={BUFFER}", "method.alpha=1.0", "method.beta=0.5"],
    },
}
COMMAND = [
    "+experiment=split_mnist",
    "sparsity=dense",
    "method=finetune",
    "optimizer.lr=0.03",
    "optimizer.momentum=0",
    "optimizer.weight_decay=0",
    f"data.batch_size={BATCH}",
    "logger=csv",
    "torch_threads=1",
]


def framework_overrides(method: str) -> list[str]:
    spec = METHODS[method]
    common = [o for o in COMMAND if not o.startswith(("method=", "optimizer.lr="))]
    return [*common, *spec["overrides"], f"optimizer.lr={spec['lr']}", f"seed={SEED}", "print_config=false"]


# -- the hand-written loop ---------------------------------------------------------------------------
def read_idx(path: Path):
    """An IDX file (MNIST's format) as a uint8 tensor."""
    import numpy as np
    import torch

    raw = path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy())


def load_mnist(data_dir: Path):
    raw = data_dir / "MNIST" / "raw"
    train_x = read_idx(raw / "train-images-idx3-ubyte").unsqueeze(1)
    test_x = read_idx(raw / "t10k-images-idx3-ubyte").unsqueeze(1)
    train_y = read_idx(raw / "train-labels-idx1-ubyte").long()
    test_y = read_idx(raw / "t10k-labels-idx1-ubyte").long()
    return train_x, train_y, test_x, test_y


class PlainReservoir:
    """A reservoir buffer written plainly: stored raw images, labels and (DER++) logits.

    The i-th example of the stream takes slot i while the buffer fills, then draws j uniform in
    [0, i] and replaces slot j if j < capacity (one draw per example, made for a batch at once)."""

    def __init__(self, capacity: int, seed: int, num_logits: int = 0):
        import torch

        self.capacity, self.seen = capacity, 0
        self.generator = torch.Generator().manual_seed(seed)
        self.x = torch.zeros(capacity, 1, 28, 28, dtype=torch.uint8)
        self.y = torch.zeros(capacity, dtype=torch.long)
        self.logits = torch.zeros(capacity, num_logits) if num_logits else None

    def sample(self, n: int):
        import torch

        chosen = torch.randperm(min(self.seen, self.capacity), generator=self.generator)[:n]
        return self.x[chosen], self.y[chosen], self.logits[chosen] if self.logits is not None else None

    def add(self, x, y, logits=None) -> None:
        import torch

        n = len(y)
        slots = torch.rand(n, generator=self.generator, dtype=torch.float64)
        slots = (slots * torch.arange(self.seen + 1, self.seen + n + 1, dtype=torch.float64)).long()
        if self.seen < self.capacity:
            fill = min(n, self.capacity - self.seen)
            slots[:fill] = torch.arange(self.seen, self.seen + fill)
        for i, slot in enumerate(slots.tolist()):
            if slot < self.capacity:
                self.x[slot], self.y[slot] = x[i], y[i]
                if logits is not None:
                    self.logits[slot] = logits[i]
        self.seen += n

    def state_dict(self) -> dict:
        return {"x": self.x, "y": self.y, "logits": self.logits, "seen": self.seen, "rng": self.generator.get_state()}


def hand_loop(method: str, data, out_dir: Path, result: dict):
    """Split MNIST in plain PyTorch, as a generator: it yields "step" after every optimizer step
    and "task" after each task's evaluation and checkpoint, so a driver can run it in lock-step
    with sparseforge. At the end, ``result`` holds the steps and the accuracy matrix R."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    spec = METHODS[method]
    train_x, train_y, test_x, test_y = data
    tasks = [(2 * t, 2 * t + 1) for t in range(5)]
    mean = torch.tensor([MEAN]).view(1, 1, 1, 1)
    std = torch.tensor([STD]).view(1, 1, 1, 1)

    def normalise(raw):
        return (raw.float().div_(255.0) - mean) / std

    with torch.random.fork_rng():  # the global RNG belongs to the framework running beside
        torch.manual_seed(SEED)  # as the framework seeds before it builds the model: same weights
        model = nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 100),
            nn.ReLU(inplace=True),
            nn.Linear(100, 100),
            nn.ReLU(inplace=True),
            nn.Linear(100, 10),
        )
    replay = method in ("er", "derpp")
    buffer = PlainReservoir(BUFFER, SEED, num_logits=10 if method == "derpp" else 0) if replay else None
    acc = [[None] * len(tasks) for _ in tasks]
    history: list[dict] = []  # training loss and accuracy of each task, as the framework logs them
    steps = 0
    for t, classes in enumerate(tasks):
        index = torch.nonzero(torch.isin(train_y, torch.tensor(classes))).flatten()
        order = torch.randperm(len(index), generator=torch.Generator().manual_seed(SEED * 1_000_003 + t))
        optimizer = torch.optim.SGD(model.parameters(), lr=spec["lr"])  # fresh per task
        loss_sum, correct, seen = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
        model.train()
        for start in range(0, len(order), BATCH):
            idx = index[order[start : start + BATCH]]
            raw, y = train_x[idx], train_y[idx]
            x = normalise(raw)
            if method == "finetune":
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            elif method == "er":
                n = len(y)
                if buffer.seen:
                    bx, by, _ = buffer.sample(BATCH)
                    out = model(torch.cat([x, normalise(bx)]))
                    loss = F.cross_entropy(out, torch.cat([y, by]))
                else:
                    out = model(x)
                    loss = F.cross_entropy(out, y)
                logits = out[:n]
                buffer.add(raw, y)
            else:  # derpp: CE + alpha * MSE(logits on draw 1, stored logits) + beta * CE(draw 2)
                if buffer.seen:
                    x1, _, z1 = buffer.sample(BATCH)
                    x2, y2, _ = buffer.sample(BATCH)
                    logits, o1, o2 = model(torch.cat([x, normalise(x1), normalise(x2)])).split(
                        [len(y), len(x1), len(x2)]
                    )
                    loss = F.cross_entropy(logits, y)
                    loss = loss + (spec["alpha"] * F.mse_loss(o1, z1) + spec["beta"] * F.cross_entropy(o2, y2))
                else:
                    logits = model(x)
                    loss = F.cross_entropy(logits, y)
                buffer.add(raw, y, logits.detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            steps += 1
            yield "step"
        history.append({"train_loss": float(loss_sum) / -(-len(order) // BATCH), "train_acc": int(correct) / seen})
        # evaluation of every seen task, class-IL and task-IL
        model.eval()
        with torch.no_grad():
            for j, seen_classes in enumerate(tasks[: t + 1]):
                test_index = torch.nonzero(torch.isin(test_y, torch.tensor(seen_classes))).flatten()
                cls = torch.tensor(seen_classes)
                right = right_task_il = 0
                for s in range(0, len(test_index), 512):
                    chunk = test_index[s : s + 512]
                    scores, yt = model(normalise(test_x[chunk])).float(), test_y[chunk]
                    right += int((scores.argmax(1) == yt).sum())
                    right_task_il += int((cls[scores[:, cls].argmax(1)] == yt).sum())
                acc[t][j] = right / len(test_index)
        model.train()
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "buffer": buffer.state_dict() if buffer is not None else None,
            "task": t,
            "rng": torch.get_rng_state(),
        }
        tmp = out_dir / "last.ckpt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, out_dir / "last.ckpt")
        yield "task"
    result.update(steps=steps, acc_matrix=acc, history=history)


# -- sparseforge, in process ---------------------------------------------------------------------------
class HandClock:
    """Drives the hand loop one piece at a time and times each piece, by kind ("step", "task")."""

    def __init__(self, hand):
        self.hand = hand
        self.wall = {"step": 0.0, "task": 0.0}
        self.cpu = {"step": 0.0, "task": 0.0}

    def advance(self, expected: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        got = next(self.hand)
        self.wall[expected] += time.perf_counter() - wall
        self.cpu[expected] += time.process_time() - cpu
        if got != expected:
            raise RuntimeError(f"the hand loop is out of step: {got} where the framework did a {expected}")

    def finish(self) -> None:
        if next(self.hand, "done") != "done":
            raise RuntimeError("the hand loop has steps left after the framework finished")


def lock_step(clock: HandClock, marks: dict):
    """A callback, first in the list: after each training batch one hand step, after each epoch
    (a task) the hand loop's evaluation and checkpoint (before the framework's own), and the
    window from ``on_train_start`` to ``on_train_end`` (before the task loop's heat map)."""
    import lightning.pytorch as pl

    class LockStep(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            marks["wall"], marks["cpu"] = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.advance("step")

        def on_train_epoch_end(self, trainer, pl_module):
            clock.advance("task")

        def on_train_end(self, trainer, pl_module):
            marks["wall"] = time.perf_counter() - marks["wall"]
            marks["cpu"] = time.process_time() - marks["cpu"]

    return LockStep()


def interleaved_run(method: str, data, out_dir: Path) -> dict:
    """One sparseforge fit with the hand loop in lock-step. sparseforge's training part is the
    window of the lock-step callback minus the hand pieces inside it."""
    from sparseforge.compose import compose_run_config
    from sparseforge.lightning.continual_loop import ContinualLoop
    from sparseforge.train import build

    hand_result: dict = {}
    (out_dir / "hand").mkdir(parents=True)
    clock, marks = HandClock(hand_loop(method, data, out_dir / "hand", hand_result)), {}
    cfg = compose_run_config(framework_overrides(method), out_dir / "sparseforge")
    run = build(cfg)
    run.trainer.callbacks.insert(0, lock_step(clock, marks))
    run.trainer.fit(run.method, datamodule=run.datamodule)
    clock.finish()
    loop = next(c for c in run.trainer.callbacks if isinstance(c, ContinualLoop))
    hand_wall, hand_cpu = sum(clock.wall.values()), sum(clock.cpu.values())
    return {
        "framework_wall_s": marks["wall"] - hand_wall,
        "framework_cpu_s": marks["cpu"] - hand_cpu,
        "hand_wall_s": hand_wall,
        "hand_cpu_s": hand_cpu,
        "steps": run.trainer.global_step,
        "hand_steps": hand_result["steps"],
        "same_accuracy_matrix": loop.acc == hand_result["acc_matrix"],
        "final_avg_acc": sum(loop.acc[-1]) / len(loop.acc[-1]),
    }


def lightning_floor_run(data, out_dir: Path, manual: bool = False) -> dict:
    """What Lightning's automatic-optimisation loop alone costs on this work: a bare
    LightningModule (the MLP, normalisation, cross-entropy, SGD) over the same batches as plain
    tuples, no callbacks, logger, progress bar or checkpoints, against the hand loop's training
    steps (finetune), in lock-step. Neither evaluation nor checkpoints are counted on either side.
    ``manual``: the same module with manual optimisation (``zero_grad``, ``manual_backward``,
    ``step`` in ``training_step``), what leaving Lightning's closure could save at most."""
    import lightning.pytorch as pl
    import torch
    import torch.nn.functional as F
    from torch import nn

    train_x, train_y = data[0], data[1]
    mean, std = torch.tensor([MEAN]).view(1, 1, 1, 1), torch.tensor([STD]).view(1, 1, 1, 1)
    epochs = []
    for t in range(5):
        index = torch.nonzero(torch.isin(train_y, torch.tensor([2 * t, 2 * t + 1]))).flatten()
        order = index[torch.randperm(len(index), generator=torch.Generator().manual_seed(SEED * 1_000_003 + t))]
        epochs.append(
            [(train_x[order[i : i + BATCH]], train_y[order[i : i + BATCH]]) for i in range(0, len(order), BATCH)]
        )

    class Batches:  # an iterable with a length (a list would be read as several loaders)
        def __init__(self, items):
            self.items = items

        def __iter__(self):
            return iter(self.items)

        def __len__(self):
            return len(self.items)

    class Bare(pl.LightningModule):
        def __init__(self):
            super().__init__()
            layers = [nn.Linear(784, 100), nn.ReLU(inplace=True), nn.Linear(100, 100), nn.ReLU(inplace=True)]
            self.model = nn.Sequential(nn.Flatten(), *layers, nn.Linear(100, 10))

        def training_step(self, batch, batch_idx):
            raw, y = batch
            return F.cross_entropy(self.model((raw.float().div_(255.0) - mean) / std), y)

        def train_dataloader(self):
            return Batches(epochs[self.current_epoch])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=METHODS["finetune"]["lr"])

    class BareManual(Bare):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            optimizer = self.optimizers()
            loss = super().training_step(batch, batch_idx)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            return loss

    hand_result: dict = {}
    (out_dir / "hand").mkdir(parents=True)
    clock, marks = HandClock(hand_loop("finetune", data, out_dir / "hand", hand_result)), {}
    trainer = pl.Trainer(
        max_epochs=5,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        reload_dataloaders_every_n_epochs=1,
        callbacks=[lock_step(clock, marks)],
    )
    trainer.fit(BareManual() if manual else Bare())
    clock.finish()
    hand_all_wall, hand_all_cpu = sum(clock.wall.values()), sum(clock.cpu.values())
    return {
        "lightning_wall_s": marks["wall"] - hand_all_wall,
        "lightning_cpu_s": marks["cpu"] - hand_all_cpu,
        "hand_steps_wall_s": clock.wall["step"],
        "hand_steps_cpu_s": clock.cpu["step"],
    }


def floor_round_in_fresh_process(tmp: Path, r: int) -> tuple[dict, dict]:
    """Both bare-Lightning arms of round ``r`` in a child process that never imports sparseforge
    (this process has: ``train.build`` trims some of Lightning's per-step work process-wide)."""
    cmd = [sys.executable, __file__, "--floor-round", str(tmp / f"floor_{r}")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    both = json.loads(proc.stdout.strip().splitlines()[-1])
    return both["automatic"], both["manual"]


def floor_round(data, out_dir: Path) -> None:
    """The child's side of :func:`floor_round_in_fresh_process`: one JSON line on stdout."""
    if "sparseforge" in sys.modules:
        raise SystemExit("the bare-Lightning arm must run in a process without sparseforge")
    automatic = lightning_floor_run(data, out_dir / "automatic")
    manual = lightning_floor_run(data, out_dir / "manual", manual=True)
    print(json.dumps({"automatic": automatic, "manual": manual}))


# -- the whole process ---------------------------------------------------------------------------------
def process_clock():
    """A callback (``+callbacks.bench_clock._target_=experiments.bench_small_steps.process_clock``)
    that appends wall-clock stamps of the first training batch and of the training end to
    $SPARSEFORGE_BENCH_STAMPS. Built lazily, so importing this module imports no Lightning."""
    import lightning.pytorch as pl

    def stamp(name: str) -> None:
        with open(os.environ[STAMP_ENV], "a") as f:
            f.write(f"{name} {time.time()!r}\n")

    class ProcessClock(pl.Callback):
        started = False

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if not self.started:
                self.started = True
                stamp("first_step")

        def on_train_end(self, trainer, pl_module):
            stamp("train_end")

    return ProcessClock()


def whole_process(tmp: Path, importtime: bool = False) -> dict:
    """``python train.py COMMAND`` in a fresh process: wall and CPU seconds, split by stamps."""
    stamps = tmp / "stamps"
    stamps.unlink(missing_ok=True)
    env = {**os.environ, STAMP_ENV: str(stamps), "SPARSEFORGE_ROOT": str(tmp)}
    clock = "+callbacks.bench_clock._target_=experiments.bench_small_steps.process_clock"
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "train.py", *COMMAND, clock]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    end = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    marks = dict(line.split() for line in stamps.read_text().splitlines())
    first, train_end = float(marks["first_step"]), float(marks["train_end"])
    summaries = sorted(tmp.glob("outputs/runs/*/summary.json"), key=lambda p: p.stat().st_mtime)
    summary = json.loads(summaries[-1].read_text())
    out = {
        "wall_s": end - start,
        "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "startup_s": first - start,  # imports, Hydra, config, data, build, Lightning setup
        "training_s": train_end - first,
        "teardown_s": end - train_end,  # heat map, summary.json, results table, exit
        "summary_wall_time_s": summary["wall_time_s"],
    }
    if importtime:
        out = {"import_s": top_level_import_seconds(proc.stderr)}
    return out


def top_level_import_seconds(stderr: str) -> float:
    """Sum of the cumulative times of top-level imports in ``-X importtime`` output."""
    total_us = 0
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line[len("import time:") :].split("|")
            if not name.startswith("  ") and cumulative.strip().isdigit():  # one space: top level
                total_us += int(cumulative)
    return total_us / 1e6


# -- main --------------------------------------------------------------------------------------------
def median_of(rows: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in rows), 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--process-runs", type=int, default=None, help="whole-process runs (default: one per round)")
    p.add_argument("--skip-process", action="store_true")
    p.add_argument("--skip-floor", action="store_true", help="skip the bare-Lightning arm")
    p.add_argument("--floor-round", type=Path, help=argparse.SUPPRESS)  # the child of the bare-Lightning arm
    a = p.parse_args()
    data_dir = os.environ.get("SPARSEFORGE_DATA_DIR")
    if not data_dir or not (Path(data_dir) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        raise SystemExit("set SPARSEFORGE_DATA_DIR to a folder holding MNIST/raw (full MNIST)")
    import torch

    torch.set_num_threads(1)
    data = load_mnist(Path(data_dir))
    if a.floor_round is not None:
        floor_round(data, a.floor_round)
        return
    tmp = Path(tempfile.mkdtemp(prefix="sf-small-steps-"))
    rows: dict[str, list[dict]] = {m: [] for m in a.methods}
    process_runs = a.process_runs if a.process_runs is not None else a.rounds
    processes: list[dict] = []
    floors: list[dict] = []
    manual_floors: list[dict] = []
    for r in range(a.rounds):
        for method in a.methods:
            x = interleaved_run(method, data, tmp / f"{method}_{r}")
            x["wall_ratio"] = x["framework_wall_s"] / x["hand_wall_s"]
            x["cpu_ratio"] = x["framework_cpu_s"] / x["hand_cpu_s"]
            rows[method].append(x)
            print(
                f"round {r} {method}: sparseforge {x['framework_wall_s']:.2f} s wall / {x['framework_cpu_s']:.2f} s CPU, "
                f"hand loop {x['hand_wall_s']:.2f} / {x['hand_cpu_s']:.2f}; ratio wall {x['wall_ratio']:.3f}, "
                f"CPU {x['cpu_ratio']:.3f}; same R: {x['same_accuracy_matrix']}",
                file=sys.stderr,
                flush=True,
            )
        if not a.skip_floor:
            x, y = floor_round_in_fresh_process(tmp, r)
            x["wall_ratio"] = x["lightning_wall_s"] / x["hand_steps_wall_s"]
            x["cpu_ratio"] = x["lightning_cpu_s"] / x["hand_steps_cpu_s"]
            floors.append(x)
            y["cpu_ratio"] = y["lightning_cpu_s"] / y["hand_steps_cpu_s"]
            y["wall_ratio"] = y["lightning_wall_s"] / y["hand_steps_wall_s"]
            manual_floors.append(y)
            print(
                f"round {r} bare Lightning / hand steps: CPU {x['cpu_ratio']:.3f} (manual optimisation "
                f"{y['cpu_ratio']:.3f})",
                file=sys.stderr,
                flush=True,
            )
        if not a.skip_process and r < process_runs:
            processes.append(whole_process(tmp))
            print(f"round {r} whole process: {processes[-1]}", file=sys.stderr, flush=True)

    figures: dict = {
        "benchmark": "small_steps",
        "torch_threads": torch.get_num_threads(),
        "rounds": a.rounds,
        "batch_size": BATCH,
        "methods": {},
    }
    for method, rs in rows.items():
        figures["methods"][method] = {
            "steps": rs[0]["steps"],
            "training_part_ratio_wall": median_of(rs, "wall_ratio"),
            "training_part_ratio_cpu": median_of(rs, "cpu_ratio"),
            "ratio_wall_per_round": [round(x["wall_ratio"], 3) for x in rs],
            "ratio_cpu_per_round": [round(x["cpu_ratio"], 3) for x in rs],
            "framework_wall_s": median_of(rs, "framework_wall_s"),
            "hand_wall_s": median_of(rs, "hand_wall_s"),
            "framework_cpu_s": median_of(rs, "framework_cpu_s"),
            "hand_cpu_s": median_of(rs, "hand_cpu_s"),
            "framework_ms_per_step_wall": round(1000 * median_of(rs, "framework_wall_s") / rs[0]["steps"], 3),
            "hand_ms_per_step_wall": round(1000 * median_of(rs, "hand_wall_s") / rs[0]["hand_steps"], 3),
            "framework_ms_per_step_cpu": round(1000 * median_of(rs, "framework_cpu_s") / rs[0]["steps"], 3),
            "hand_ms_per_step_cpu": round(1000 * median_of(rs, "hand_cpu_s") / rs[0]["hand_steps"], 3),
            "same_accuracy_matrix": all(x["same_accuracy_matrix"] for x in rs),
            "final_avg_acc": round(rs[0]["final_avg_acc"], 4),
            "within_1_5x_cpu": median_of(rs, "cpu_ratio") <= 1.5,
        }
        m = figures["methods"][method]
        print(
            f"{method}: training part sparseforge/hand loop = {m['training_part_ratio_wall']} wall, "
            f"{m['training_part_ratio_cpu']} CPU ({m['framework_ms_per_step_cpu']} vs {m['hand_ms_per_step_cpu']} "
            f"CPU ms/step); same accuracy matrix: {m['same_accuracy_matrix']}"
        )
    if floors:
        figures["lightning_floor"] = {
            "what": "bare LightningModule, automatic optimisation, no callbacks/logger/bar/checkpoints, "
            "vs the hand loop's finetune steps (no evaluation on either side), in a process without sparseforge",
            "ratio_cpu": median_of(floors, "cpu_ratio"),
            "ratio_wall": median_of(floors, "wall_ratio"),
            "ratio_cpu_per_round": [round(x["cpu_ratio"], 3) for x in floors],
            "manual_optimisation_ratio_cpu": median_of(manual_floors, "cpu_ratio"),
            "manual_optimisation_ratio_wall": median_of(manual_floors, "wall_ratio"),
            "manual_optimisation_ratio_cpu_per_round": [round(x["cpu_ratio"], 3) for x in manual_floors],
        }
        floor = figures["lightning_floor"]
        print(
            f"bare Lightning loop / hand-written steps: {floor['ratio_cpu']} CPU "
            f"({floor['manual_optimisation_ratio_cpu']} with manual optimisation)"
        )
    if processes:
        proc = {k: median_of(processes, k) for k in processes[0]}
        proc["runs"] = len(processes)
        proc.update(whole_process(tmp, importtime=True))
        proc["command"] = "python train.py " + " ".join(COMMAND)
        figures["whole_process"] = proc
        print(
            f"whole process: {proc['wall_s']} s wall ({proc['cpu_s']} s CPU): start-up {proc['startup_s']} s "
            f"(imports {proc['import_s']} s), training {proc['training_s']} s, tear-down {proc['teardown_s']} s"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
