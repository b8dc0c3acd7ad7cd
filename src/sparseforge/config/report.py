"""``report``: what ``sparseforge-aggregate`` shows for a sweep of runs (a study's table).

A study (``configs/study/<name>.yaml``) sets ``report`` next to its axes, so the study carries
its own table: the metric it is about, the columns beside it, which of them are fractions shown
in percent, and which rows it compares seed by seed. Every run stores the node in its config
(summary.json), which is where ``sparseforge-aggregate`` reads it; its command-line flags win.
The node is checked when a run starts, like every other setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sparseforge.errors import ConfigError
from sparseforge.options import build_options, check


@dataclass
class Report:
    #: The first value column, the y axis of the plots and the value of the paired differences.
    metric: str = "test/acc"
    #: Further columns (summary values: metric names, ``<section>.<key>`` such as
    #: ``cl.forgetting``, ``flops.train_relative_to_dense``); null: density, training FLOPs and
    #: the CL metrics, where the runs have them.
    columns: list[str] | None = None
    #: Columns that are fractions, shown x100 in %.
    percent: list[str] = field(default_factory=list)
    #: Pairs of rows [A, B] (row labels, e.g. arm names): metric(A) - metric(B) seed by seed.
    paired: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        check("report.metric", isinstance(self.metric, str) and bool(self.metric), "must be a metric name")
        for key in ("columns", "percent", "paired"):
            value = getattr(self, key)
            check(f"report.{key}", value is None or not isinstance(value, str), f"must be a list, got {value!r}")
        for pair in self.paired:
            if isinstance(pair, str) or len(pair) != 2:
                raise ConfigError("report.paired", f"each entry must be a pair [A, B] of row labels, got {pair!r}")
        self.columns = [str(c) for c in self.columns] if self.columns is not None else None
        self.percent = [str(c) for c in self.percent or ()]
        self.paired = [[str(a), str(b)] for a, b in self.paired or ()]

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> Report:
        """The report of a config node (``cfg.report``, or the dict in a summary); null: the defaults."""
        return build_options(cls, {str(k): v for k, v in (node or {}).items()}, "report")
