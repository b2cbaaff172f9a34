"""Keep freed host memory for reuse, so that XLA CPU does not page-fault its buffers in again on every step.

XLA's CPU runtime allocates a step's temporary buffer (``temp_size_in_bytes`` of the compiled step's memory
analysis: 36 MB for the reference second-order meta-step) with ``malloc`` on every execution and frees it at the
end. glibc serves requests above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and returns them to the
kernel with ``munmap`` on ``free``, so every step touches all of that memory for the first time: one page fault
per 4 KiB page, each zeroed by the kernel. On the reference workload that costs about a third of the CPU step time
(``benchmarks/results/compare.md``, ``--malloc``).

:func:`keep_freed_host_memory` tells glibc to serve every allocation from its heap (``M_MMAP_MAX = 0``) and
never to give freed heap memory back (``M_TRIM_THRESHOLD``): a step then reuses the pages of the previous one.
It is what the ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` environment variables do, and what jemalloc or
tcmalloc (recommended for PyTorch on CPU for the same reason) do by default. The cost: the process keeps its peak
heap until it exits. Call it once, early; it is process-wide, so the library never calls it on import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["keep_freed_host_memory"]

logger = logging.getLogger(__name__)

# mallopt parameters (glibc <malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # an int: mallopt takes one; 2 GiB of free heap top before glibc would trim


def keep_freed_host_memory() -> bool:
    """Serve host allocations from glibc's heap and keep freed memory there for reuse (process-wide).

    Returns:
      True if glibc accepted both settings; False where there is no glibc ``mallopt`` (macOS, musl, Windows):
      nothing is changed there (jemalloc / tcmalloc through ``LD_PRELOAD`` have the same effect).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        logger.info("keep_freed_host_memory: no glibc mallopt in this process (%s); nothing changed", name)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
    logger.info("keep_freed_host_memory: %s", "heap allocations, freed memory kept" if ok else "mallopt refused")
    return ok
