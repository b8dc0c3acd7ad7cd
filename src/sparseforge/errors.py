"""Errors meant for people: each carries one line that says what is wrong and how to fix it.

The entry point catches :class:`SparseforgeError`, prints its message without a traceback and
exits non-zero. Anything else is a bug and keeps its traceback.
"""


class SparseforgeError(Exception):
    """Base class for user-facing errors (bad config, missing data, impossible combination)."""

    exit_code = 2


class ConfigError(SparseforgeError, ValueError):
    """A config value is invalid. The message names the key and the allowed values."""

    def __init__(self, key: str, problem: str, allowed: str | None = None):
        self.key = key
        msg = f"config error: {key}: {problem}"
        if allowed:
            msg += f" (allowed: {allowed})"
        super().__init__(msg)


class DataNotFoundError(SparseforgeError, FileNotFoundError):
    """A dataset is missing on disk and could not be downloaded."""


class DataCorruptError(SparseforgeError):
    """A dataset file is on disk but cut short or damaged (downloading again does not replace it)."""


class RunFault(SparseforgeError):
    """A run that cannot go on for a reason outside its config (disk, checkpoint, divergence).

    Still one line without a traceback, but exit status 1: status 2 means the command line was wrong.
    """

    exit_code = 1


class DiskFullError(RunFault):
    """A write failed because the filesystem is full (or the quota is used up)."""

    def __init__(self, path):
        self.path = path
        super().__init__(f"No space left on device writing {path}")


class CheckpointUnreadableError(RunFault):
    """A checkpoint to resume from cannot be read: truncated (a kill mid-copy) or corrupt."""


class TrainingDivergedError(RunFault):
    """The training loss became NaN or infinite (``nonfinite_loss=error``)."""


class RunInUseError(SparseforgeError):
    """Another live process is writing the same run directory (the same ``run_name``)."""
