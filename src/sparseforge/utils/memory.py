"""Peak memory of a run: host (resident set) and GPU (allocated by PyTorch).

Host: Linux keeps the peak resident set size of a process (``VmHWM`` in ``/proc/self/status``)
and lets the process reset it (writing ``5`` to ``/proc/self/clear_refs``), so a run measures its
own peak even when it shares the process with earlier runs (in-process sweeps, tests). Elsewhere,
``resource.getrusage``'s ``ru_maxrss``: the peak since the process started.
GPU: ``torch.cuda.max_memory_allocated`` (tensors) and ``max_memory_reserved`` (the caching
allocator's pool), reset at the run's start; None without CUDA.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_memory() -> bool:
    """Start measuring peaks now; returns whether the host peak could be reset."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    try:
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident set size
        return True
    except OSError:
        return False


def _vm_hwm_bytes() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_memory(host_reset: bool = False) -> dict[str, Any]:
    """Peak host and GPU memory in bytes since :func:`reset_peak_memory` (see the module doc)."""
    import torch

    host = _vm_hwm_bytes()
    source = "VmHWM since the run started" if host_reset else "VmHWM since the process started"
    if host is None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        host = rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, kB elsewhere
        source = "ru_maxrss since the process started"
    gpu = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {
        "peak_host_bytes": host,
        "peak_host_source": source,
        "peak_gpu_allocated_bytes": torch.cuda.max_memory_allocated() if gpu else None,
        "peak_gpu_reserved_bytes": torch.cuda.max_memory_reserved() if gpu else None,
    }
