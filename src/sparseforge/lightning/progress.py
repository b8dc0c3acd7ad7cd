"""The progress bar: Lightning's own (Rich when installed, else tqdm), redrawn at most ten times a
second.

Lightning's bars update after every training batch: the bar's position, and the metrics it
shows, which it reads through the logger connector. On a small model (an MLP at batch 10, about
1 ms a step on a CPU) that was a tenth of a step. Here a batch that ends within 0.1 s of the last
update skips it; the last batch of an epoch always updates, so the bar ends where the epoch did.
"""

from __future__ import annotations

import time

from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE, RichProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import TQDMProgressBar

MIN_INTERVAL_S = 0.1


class _AtMostTenTimesASecond:
    _next_update = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        if now < self._next_update and batch_idx + 1 < self.total_train_batches:
            return
        self._next_update = now + MIN_INTERVAL_S
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class ThrottledRichProgressBar(_AtMostTenTimesASecond, RichProgressBar):
    pass


class ThrottledTQDMProgressBar(_AtMostTenTimesASecond, TQDMProgressBar):
    pass


def progress_bar():
    """The bar Lightning would pick by default, throttled."""
    return ThrottledRichProgressBar() if _RICH_AVAILABLE else ThrottledTQDMProgressBar()
