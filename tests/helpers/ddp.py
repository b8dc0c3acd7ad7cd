"""Helpers for tests that start their own process groups."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port free on this machine now, for MASTER_PORT."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
