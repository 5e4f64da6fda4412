"""Opt-in CPU allocator setting: keep freed memory in the process instead of handing it back to the OS.

AGF keeps each layer's input through its forward pass and frees it during the backward walk. With glibc's
defaults the freed heap is returned to the OS at the end of every call, and the next call's forward pays a
page fault for each 4 KiB it touches again: on a 2-core Zen 5 VM, ResNet-50 at batch 1 took 16,500 faults
and 23 ms per forward, about 13 % of an AGF call (`benchmarks/agf_speed.py --malloc keep` measures both).

This is process-wide, so the library never does it on its own: call `keep_freed_memory()` once (a notebook's
first cell), or use sslx's command-line entry points, which do. The cost is that the process's resident
memory stays at its peak (nothing is lost: the memory is reused by the next allocation).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 2**31 - 1  # the largest mallopt takes: the heap's top is in practice never trimmed
MMAP_THRESHOLD = 32 << 20  # blocks below 32 MiB (glibc's largest dynamic threshold) come from the heap
GLIBC_TUNABLES = f"glibc.malloc.trim_threshold={TRIM_THRESHOLD}:glibc.malloc.mmap_threshold={MMAP_THRESHOLD}"


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory for reuse; True when applied, False where malloc is not glibc's."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok)


__all__ = ["keep_freed_memory", "GLIBC_TUNABLES"]
