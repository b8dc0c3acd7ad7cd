"""The embedded default run, end to end, through the real config."""

from __future__ import annotations

import json

from sparseforge.train import train
from tests.helpers.config import compose_config


def test_default_config_trains_and_writes_summary(tmp_path):
    cfg = compose_config(["logger=csv"], output_dir=tmp_path / "run")
    metrics = train(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["metrics"]["test/acc"] == metrics["test/acc"]
    assert summary["config"]["dataset"]["_target_"].endswith("Digits")
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    # class-IL over 5 tasks: the last row of R is filled, nothing above the diagonal is.
    R = summary["cl"]["acc_matrix"]
    assert len(R) == 5 and all(v is not None for v in R[-1])
    assert all(R[t][j] is None for t in range(5) for j in range(t + 1, 5))
