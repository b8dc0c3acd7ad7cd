"""Hydra's command-line errors, with an unknown key answered by the closest valid one.

For ``sparsity.densty=0.1`` Hydra prints "Could not override 'sparsity.densty'. To append to your
config use +sparsity.densty=0.1", advice that only leads to a second error once the run has
loaded its data. OmegaConf's error for an unknown key carries the node it was looked up in, so
for any struct node (every schema, the top level) the key is refused at once with the closest
key that node has: ``error: config error: sparsity.densty: unknown key (did you mean `density`?)``.
Every other Hydra error is printed as Hydra prints it.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import CompactHydraException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from sparseforge.errors import ConfigError


def unknown_key_error(exc: BaseException) -> ConfigError | None:
    """The ConfigError for an unknown-key error anywhere in ``exc``'s chain, or None."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        cause = cause.__cause__
    node = getattr(cause, "parent_node", None)
    if cause is None or node is None or not hasattr(node, "keys"):
        return None
    keys = [str(k) for k in node.keys() if not str(k).startswith("_")]  # not _target_ and the like
    if str(cause.key) in keys:  # not an unknown key after all
        return None
    hint = difflib.get_close_matches(str(cause.key), keys, n=1, cutoff=0.6)
    if hint:
        return ConfigError(cause.full_key, f"unknown key (did you mean `{hint[0]}`?)")
    return ConfigError(cause.full_key, "unknown key", ", ".join(sorted(keys)))


@contextmanager
def one_line_hydra_errors() -> Iterator[None]:
    """Around ``@hydra.main``: Hydra raises its errors here instead of printing them itself
    (HYDRA_FULL_ERROR), so that an unknown key gets the closest valid key. A user who set
    HYDRA_FULL_ERROR keeps Hydra's full tracebacks."""
    if os.environ.get("HYDRA_FULL_ERROR"):
        yield
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    except CompactHydraException as exc:
        unknown = unknown_key_error(exc)
        if unknown is not None:
            print(f"error: {unknown}", file=sys.stderr)
            sys.exit(unknown.exit_code)
        sys.stderr.write(str(exc) + os.linesep)  # as Hydra prints it
        if isinstance(exc.__cause__, OmegaConfBaseException):
            sys.stderr.write(str(exc.__cause__) + os.linesep)
        sys.exit(1)
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)
