"""A non-editable install works: the wheel carries the configs, and ``sparseforge-train`` runs
from an empty directory with no source checkout in sight."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.helpers.cli import REPO

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _run(cmd, cwd, env, timeout=900):
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_a_wheel_installed_into_a_fresh_venv_trains_from_an_empty_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPARSEFORGE_CONFIG_DIR")}
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
        REPO,
        env,
    )
    (wheel,) = wheels.glob("sparseforge-*.whl")

    # A fresh venv that sees this environment's dependencies (torch, Lightning, ...) as a plain
    # path: the source checkout's editable-install hook is not processed there.
    fresh = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(fresh)
    python = fresh / "bin" / "python"
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env
        ).stdout.strip()
    )
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)], tmp_path, env
    )

    where = _run([str(python), "-c", "import sparseforge; print(sparseforge.__file__)"], tmp_path, env).stdout.strip()
    assert Path(where).is_relative_to(site), f"sparseforge imported from {where}, not from the installed wheel"

    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["logger=none", "print_config=false", "run_name=wheel", "scenario.n_tasks=2", "scenario.epochs_per_task=1"]
    _run([str(fresh / "bin" / "sparseforge-train"), *args], empty, {**env, "OMP_NUM_THREADS": "1"})
    summary = json.loads((empty / "outputs" / "wheel" / "summary.json").read_text())
    assert summary["status"] == "completed" and 0.0 < summary["metrics"]["test/acc"] <= 1.0
