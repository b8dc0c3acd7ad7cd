"""``cpu_allocator``: retain keeps CPU tensors' memory in the process's heap (glibc's mallopt)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from sparseforge.errors import ConfigError
from sparseforge.train import build
from sparseforge.utils.allocator import _glibc, configure_cpu_allocator
from tests.helpers.config import compose_config

# Bytes held in mmapped blocks after allocating an 8 MiB tensor, in a fresh interpreter (the
# setting is process-wide and cannot be undone, so it never touches the test process).
PROBE = textwrap.dedent(
    """
    import ctypes, sys
    import torch
    from sparseforge.utils.allocator import configure_cpu_allocator

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    changed = configure_cpu_allocator(sys.argv[1])
    before = libc.mallinfo2().hblkhd
    tensor = torch.ones(2 << 20)
    print(changed, libc.mallinfo2().hblkhd - before)
    """
)


def mmapped_growth(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    changed, grown = out.split()
    return changed == "True", int(grown)


@pytest.mark.skipif(_glibc() is None, reason="mallopt is glibc's (Linux); elsewhere retain is a no-op by design")
def test_retain_serves_a_large_tensor_from_the_heap_where_the_default_maps_fresh_pages():
    changed, grown = mmapped_growth("system")
    assert not changed and grown >= 8 << 20  # glibc's default: a fresh mmap (zeroed pages) per large block
    changed, grown = mmapped_growth("retain")
    assert changed and grown == 0  # from the heap, whose freed pages the next step reuses


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="system, retain"):
        configure_cpu_allocator("jemalloc")


def test_a_bad_cpu_allocator_fails_at_start_with_one_line(tmp_path):
    cfg = compose_config(["cpu_allocator=jemalloc", "logger=none"], output_dir=tmp_path / "run")
    with pytest.raises(ConfigError) as err:
        build(cfg)
    message = str(err.value)
    assert message.startswith("config error: cpu_allocator:") and "system, retain" in message
    assert "\n" not in message and not (tmp_path / "run").exists()
