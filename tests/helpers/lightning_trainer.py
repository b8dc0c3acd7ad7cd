"""A bare Lightning Trainer for the tests of sparseforge's trims to Lightning's loop: no logger,
bar, model summary or checkpoints, and the run's no-op profiler unless told otherwise."""

from __future__ import annotations

import lightning.pytorch as pl

from sparseforge.lightning.profiler import NoProfiler


def bare_trainer(**settings) -> pl.Trainer:
    quiet = {
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "profiler": NoProfiler(),
    }
    return pl.Trainer(**{**quiet, **settings})
