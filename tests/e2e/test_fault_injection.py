"""The short version of experiments/fault_injection.py, as CI runs it: SIGKILL at each kind of
point once (a random time, mid-checkpoint write, just before a checkpoint's rename, mid CSV
append, right after fit, mid final summary write), SIGTERM and SIGINT, a full disk (as root), a corrupt checkpoint, concurrent runs
of one name, NaN and a sweep with a bad point. Every resumed run must be bit-identical to the
uninterrupted one (weights, masks, accuracy matrix, metrics, CSV rows), every fault one line with
the right status. The full set (>= 20 kills) is ``python experiments/fault_injection.py``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.cli import REPO


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_short_fault_injection_finds_every_resume_identical_and_every_fault_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "fault_injection.py"), "--kills", "6", "--work", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3500,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert result["kills"] == result["kills_triggered"] == result["kills_identical"] == 6
    assert result["faults_ok"] == result["faults_total"] == 9, result["faults"]
