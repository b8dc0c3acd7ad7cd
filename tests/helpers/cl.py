"""Helpers for the continual-learning tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sparseforge.methods.base import ContinualMethod
from sparseforge.methods.er import ER

# Dense, quiet, no W&B: the CL tests pin sparsity=dense (the default run may be sparse).
QUIET = ["sparsity=dense", "logger=none", "print_config=false", "trainer.enable_progress_bar=false"]


class ClassILOnly(ContinualMethod):
    """A method that declares it cannot be evaluated task-incrementally (e.g. a kNN head)."""

    name = "class_il_only"
    supports_task_il = False


class BoundaryRecorder(ER):
    """ER that records what it is told about task boundaries, into summary.json ("boundaries")."""

    name = "boundary_recorder"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.record = {"begin_task": [], "end_task": [], "current_task": set(), "optimizers": set()}

    def begin_task(self, task):
        super().begin_task(task)
        self.record["begin_task"].append(task.id)

    def end_task(self, task):
        super().end_task(task)
        self.record["end_task"].append(task.id)

    def observe(self, batch):
        self.record["current_task"].add(self.current_task)
        self.record["optimizers"].add(id(self.optimizers().optimizer))
        return super().observe(batch)

    def summary_section(self, trainer):
        r = self.record
        boundaries = {
            "begin_task": r["begin_task"],
            "end_task": r["end_task"],
            "current_task": sorted(r["current_task"]),
            "distinct_optimizers": len(r["optimizers"]),
        }
        return {**super().summary_section(trainer), "boundaries": boundaries}


def summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


class one_thread:
    """Run tiny models with one intra-op thread: on a shared 2-core machine several threads per
    process make small ops tens of times slower."""

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


def buffer_dump():
    """A callback that saves every rank's replay buffer at the end (checks DDP consistency)."""
    import lightning.pytorch as pl

    class BufferDump(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            path = f"{trainer.default_root_dir}/buffer_rank{trainer.global_rank}.pt"
            torch.save(pl_module.buffer.state_dict(), path)

    return BufferDump()


class Crash(RuntimeError):
    pass


def crash_at_epoch(epoch: int):
    """A callback that crashes the run when ``epoch`` starts, i.e. right after the checkpoint of
    the epoch before: a failure that leaves the config (and so every schedule) unchanged."""
    import lightning.pytorch as pl

    class CrashAtEpoch(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == epoch:
                raise Crash(f"crash at the start of epoch {epoch}")

    return CrashAtEpoch()


def crash_at_step(step: int):
    """A callback that crashes the run as the batch after optimizer step ``step`` starts, i.e.
    right after that step's checkpoint (``every_n_train_steps``), inside an epoch."""
    import lightning.pytorch as pl

    class CrashAtStep(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == step:
                raise Crash(f"crash after step {step}")

    return CrashAtStep()


def record_train_accuracy(path: str):
    """A callback that appends (epoch, train/acc) of every finished epoch to ``path`` (JSON lines)."""
    import lightning.pytorch as pl

    class RecordTrainAccuracy(pl.Callback):
        def _record(self, trainer, epoch):
            value = trainer.callback_metrics.get("train/acc")
            if value is not None and epoch >= 0:
                with open(path, "a") as f:
                    f.write(json.dumps([epoch, float(value)]) + "\n")

        def on_train_epoch_start(self, trainer, pl_module):  # the module logged the epoch before
            if not trainer.fit_loop.restarted_mid_epoch:
                self._record(trainer, trainer.current_epoch - 1)

        def on_train_end(self, trainer, pl_module):
            self._record(trainer, trainer.current_epoch - 1)

    return RecordTrainAccuracy()


def cl_dst_dump():
    """A callback that saves every rank's CL-with-DST state (stored masks, merged weights, the
    current mask) at the end (checks DDP consistency)."""
    import lightning.pytorch as pl

    class CLDSTDump(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            state = {"store": pl_module.store.state_dict(), "masks": pl_module.masks.state_dict()}
            torch.save(state, f"{trainer.default_root_dir}/cl_dst_rank{trainer.global_rank}.pt")

    return CLDSTDump()


def method_state_dump():
    """A callback that saves every rank's method state at the end (checks DDP consistency)."""
    import lightning.pytorch as pl

    class MethodStateDump(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            path = f"{trainer.default_root_dir}/method_state_rank{trainer.global_rank}.pt"
            weights = {k: v.detach().cpu() for k, v in pl_module.model.state_dict().items()}
            torch.save({"method_state": pl_module.method_state(), "weights": weights}, path)

    return MethodStateDump()


def assert_same_state(a, b, where: str = "") -> None:
    """Nested dicts/lists of tensors and plain values, equal exactly."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def record_replayed_views(path: str):
    """A callback that records the input every (task, image) was trained with and, at the end,
    saves for every example in the replay buffer its replayed view (``augment`` of the stored raw
    image with the stored task id), the view it was trained with, and another task's view of it."""
    import lightning.pytorch as pl

    class ReplayedViews(pl.Callback):
        def __init__(self):
            self.trained: dict[tuple[int, int], torch.Tensor] = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            images, tasks = trainer.datamodule.locate(batch.index)
            for k, (image, task) in enumerate(zip(images.tolist(), tasks.tolist(), strict=True)):
                self.trained[(task, image)] = batch.x[k].detach().clone()

        def on_train_end(self, trainer, pl_module):
            dm, buffer = trainer.datamodule, pl_module.buffer
            drawn = buffer.get(torch.nonzero(buffer.valid).flatten())
            images = [int(torch.nonzero((dm.train_data.x == raw).flatten(1).all(1))[0]) for raw in drawn.raw]
            other = (drawn.task + 1) % dm.n_tasks
            torch.save(
                {
                    "task": drawn.task.cpu(),
                    "replayed": dm.augment(drawn.raw, drawn.task).cpu(),
                    "trained": torch.stack(
                        [self.trained[(int(t), i)] for t, i in zip(drawn.task, images, strict=True)]
                    ).cpu(),
                    "other_task": dm.augment(drawn.raw, other).cpu(),
                },
                path,
            )

    return ReplayedViews()


def count_replay_draws(path: str):
    """A callback that counts the buffer draws a replay method made (non-empty ``replay()``
    results) and writes the count to ``path`` at the end."""
    import lightning.pytorch as pl

    class CountReplayDraws(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.count, replay = 0, pl_module.replay

            def counted():
                drawn = replay()
                self.count += drawn is not None
                return drawn

            pl_module.replay = counted

        def on_train_end(self, trainer, pl_module):
            with open(path, "w") as f:
                f.write(str(self.count))

    return CountReplayDraws()


def save_weights_every_epoch():
    """A callback that saves the module's weights after every finished epoch to
    ``<run dir>/weights_epoch<e>.pt`` (to re-evaluate any epoch's model afterwards)."""
    import lightning.pytorch as pl

    class SaveWeights(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.is_global_zero:
                path = f"{trainer.default_root_dir}/weights_epoch{trainer.current_epoch}.pt"
                torch.save(pl_module.state_dict(), path)

    return SaveWeights()


def best_validation_dump():
    """A callback that saves every rank's view of the validation split and its best-validation
    state at the end (checks DDP consistency)."""
    import lightning.pytorch as pl

    from sparseforge.lightning.best_validation import BestValidation

    class BestValidationDump(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            best = next(c for c in trainer.callbacks if isinstance(c, BestValidation))
            state = {**best.state_dict(), "val_index": trainer.datamodule.tasks[0].val_index}
            torch.save(state, f"{trainer.default_root_dir}/best_rank{trainer.global_rank}.pt")

    return BestValidationDump()
