"""The documentation site builds strictly: a broken link or anchor fails the build."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers.cli import REPO


def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(REPO / "mkdocs.yml"),
            "-d",
            str(tmp_path / "site"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").exists() and (tmp_path / "site" / "extending" / "index.html").exists()


def test_readme_is_a_short_landing_page():
    assert len((REPO / "README.md").read_bytes()) <= 10 * 1024
