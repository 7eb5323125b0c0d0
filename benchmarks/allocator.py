"""Keep glibc's malloc from returning memory to the OS between timed calls (for the layer benchmarks).

A 2-10 MB output is allocated and freed on every call. With glibc's defaults such blocks come from mmap, or
from a heap top that is trimmed back to the OS as soon as enough is free, so a call pays page faults (about
2500 for 10 MB) or not depending on what the variant timed before it did: the same cell of
benchmarks/kernels.py swung 0.4-1.8x between runs. With the thresholds raised every variant reuses its
freed memory, as a training loop in steady state does, and the timings compare the kernels.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)


def steady_allocator() -> str:
    """Raise glibc's trim and mmap thresholds for this process; a line saying what was done."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return "allocator: not glibc, left as it is"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = [
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX),
        mallopt(M_TRIM_THRESHOLD, 1 << 30),
        mallopt(M_TOP_PAD, 64 << 20),
    ]
    if not all(done):
        return "allocator: glibc refused the thresholds, left as it is"
    return "allocator: glibc, memory kept by the process between calls (no trim; mmap only above 32 MB)"
