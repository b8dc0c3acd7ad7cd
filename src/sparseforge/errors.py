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
