"""How the C library's allocator hands memory back to the OS, for CPU training.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves large blocks with
``mmap`` and gives freed memory back to the OS (``munmap``, heap trimming), so a training step
that frees and re-allocates the same activation, gradient and mask buffers every step pays for
fresh zeroed pages again and again: page faults, measured at 10-20% of an N:M MLP step on a CPU.

``retain`` keeps freed memory in the process (``mallopt``: blocks below ``MMAP_THRESHOLD`` come
from the heap, and the heap is trimmed only when more than ``TRIM_THRESHOLD`` of it is free), so
the next step reuses pages that are already mapped. (Setting only the trim threshold is worse than
the defaults: any ``mallopt`` turns off glibc's adaptive mmap threshold, which then stays at
128 KiB.) The peak resident set size stays that of the run's largest step;
what changes is that memory freed after a peak is kept for reuse instead of returned at once.
``system`` leaves the C library's defaults. Only glibc on Linux has these knobs; elsewhere both
values behave as ``system``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

CPU_ALLOCATOR = ("system", "retain")

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # blocks below 32 MiB from the heap (glibc's largest allowed value)
TRIM_THRESHOLD = 1 << 30  # give the heap's top back only when more than 1 GiB of it is free
TOP_PAD = 64 << 20  # grow the heap 64 MiB at a time


@functools.cache
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl has no such symbol)
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


def configure_cpu_allocator(mode: str) -> bool:
    """Apply ``mode`` (one of :data:`CPU_ALLOCATOR`) to this process; returns whether anything
    changed (False for ``system`` and where the C library is not glibc). Blocks already
    allocated are unaffected; call it before training starts."""
    if mode not in CPU_ALLOCATOR:
        raise ValueError(f"unknown CPU allocator mode {mode!r}; expected one of {', '.join(CPU_ALLOCATOR)}")
    if mode == "system":
        return False
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    ok &= libc.mallopt(_M_TOP_PAD, TOP_PAD)
    return bool(ok)


def release_free_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``); elsewhere a no-op.

    Blocks under the mmap threshold come from the heap, and their pages stay resident when they are
    freed below a live block: after a burst of such temporaries (a topology update) they would add
    to every later peak. Cheap (it walks the free lists); returns whether anything was done.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
