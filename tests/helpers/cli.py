"""Running the project as a user does: ``python train.py`` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_cli(args, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python train.py <args>`` in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sweep_tool(tool: str, *args: str, stdout=None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a sweep tool (``cli`` is ``sparseforge-sweep``, ``aggregate`` is ``sparseforge-aggregate``)
    as a user would; ``stdout`` may be an open file, as for ``sparseforge-sweep plan > sweep.txt``."""
    return subprocess.run(
        [sys.executable, "-m", f"sparseforge.sweeps.{tool}", *args],
        cwd=REPO,
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
    )
