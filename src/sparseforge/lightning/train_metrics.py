"""The training loss and accuracy of summary.json, kept in every checkpoint.

Lightning does not save its logged metrics in checkpoints. A run killed after its final
checkpoint but before summary.json said completed is finished by a rerun (``ckpt_path=auto``)
that restores that checkpoint and trains nothing, so the rerun has no logged metrics of its own:
it reports the ones saved here, which are those the uninterrupted run ended with.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

SUMMARY_KEYS = ("train/loss", "train/acc")


class TrainMetricsForSummary(pl.Callback):
    def __init__(self) -> None:
        self.saved: dict[str, float] = {}

    @staticmethod
    def _current(trainer: pl.Trainer) -> dict[str, float]:
        logged = trainer.callback_metrics
        return {key: float(logged[key]) for key in SUMMARY_KEYS if key in logged}

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint["summary_metrics"] = {**self.saved, **self._current(trainer)}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self.saved = dict(checkpoint.get("summary_metrics", {}))

    def summary_section(self, trainer: pl.Trainer) -> dict[str, Any]:
        return {"metrics": {**self.saved, **self._current(trainer)}}
