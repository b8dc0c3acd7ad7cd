"""Lightning's default profiler (none), without its per-call cost.

Lightning wraps every hook it calls, on the module and on each callback, in
``with trainer.profiler.profile(name):``; the default ``PassThroughProfiler`` does nothing
there but still builds a generator-based context manager each time, about 50 times a step. That
was 2-3% of a batch-10 MLP step on a CPU; one shared no-op context costs next to nothing.
"""

from __future__ import annotations

from contextlib import nullcontext

from lightning.pytorch.profilers import PassThroughProfiler

_NOTHING = nullcontext()


class NoProfiler(PassThroughProfiler):
    def profile(self, action_name: str) -> nullcontext:
        return _NOTHING
