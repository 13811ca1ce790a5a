"""Process-wide CPU memory settings for the fit job."""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Make glibc malloc serve large blocks from its heap and keep freed memory for reuse.

    PyTorch has no caching allocator on the CPU. Each training step's activations (tens of MB
    each) are fresh blocks that glibc maps and unmaps, so the kernel zeroes new pages on
    every step: a third of PSG's CPU time on 2 cores (docs/lab/issue-04-psg-lgffp.md, "Fourth round"). The
    cost is that RSS stays at its peak until the process ends, which suits a fit job. Returns
    False, changing nothing, where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        log.debug("not glibc: malloc left as it is")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
