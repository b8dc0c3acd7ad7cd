"""A rank-zero-only logger (only the main process prints under DDP), and when Lightning's loggers write."""

from __future__ import annotations

import logging

from lightning.pytorch.utilities import rank_zero_only


def logger_writes_at_this_batch(trainer) -> bool:
    """Whether Lightning's loggers write a row for the current training batch: every
    ``trainer.log_every_n_steps`` optimizer steps, after the stepping batch of an accumulated step.

    A ``self.log`` call costs Lightning bookkeeping (a tenth of a millisecond or more on a CPU,
    a tenth of a batch-10 MLP step), and on the other batches its value is never written:
    per-step values are only worth logging where this is true. Valid from ``on_train_batch_start`` to
    ``on_train_batch_end`` (Lightning's own test, as LearningRateMonitor's).
    """
    write = trainer._logger_connector.should_update_logs
    if write and trainer.accumulate_grad_batches > 1:
        write = not trainer.fit_loop._should_accumulate()
    return write


def get_logger(name: str = __name__) -> logging.Logger:
    logger = logging.getLogger(name)
    for level in ("debug", "info", "warning", "error", "exception", "fatal", "critical"):
        setattr(logger, level, rank_zero_only(getattr(logger, level)))
    return logger


# Harmless messages Lightning prints on every run here (see the project's environment notes).
_NOISE = (
    r".*The `srun` command is available on your system but is not used.*",  # SLURM is installed locally
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # torch/Lightning version skew
    r".*is smaller than the logging interval.*",  # tiny datasets: fewer batches than log_every_n_steps
)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def tidy_console() -> None:
    """One line per message on the console, without Lightning's known harmless chatter.

    The ``lightning`` package adds its own console handler, and under Hydra the root logger
    already prints (and writes train.log), so every Lightning line would appear twice.
    """
    import warnings

    import lightning  # noqa: F401  (adds the handler we remove)

    if logging.getLogger().handlers:
        logging.getLogger("lightning").handlers.clear()
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropTips())
    for pattern in _NOISE:
        warnings.filterwarnings("ignore", message=pattern)
