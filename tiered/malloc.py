"""Keep large freed blocks in the heap so per-step temporaries do not page-fault.

glibc serves allocations above its mmap threshold (128 KiB to 32 MiB, adapting) with
fresh ``mmap`` pages and returns them to the kernel on free, so every large temporary of a
recurrent step is zero-filled page by page again. Raising the mmap and trim thresholds
makes freed blocks reusable. The cost: the process keeps its peak heap.

The dense RAM no longer depends on it: its link matrices, the largest such temporaries,
come from a reuse pool (``tiered.tiers.link_kernels.LinkPool``; docs/tiers.md, "Speed of
the dense RAM"). The ``tiered`` command still calls ``tune_malloc()`` for everything else;
library users can call it themselves, or set ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_``.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def tune_malloc(threshold_bytes: int = 1 << 30) -> bool:
    """Serve blocks up to ``threshold_bytes`` from the heap and keep freed memory.

    Returns:
        True if glibc accepted both settings; False elsewhere (not Linux, not glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    value = min(int(threshold_bytes), 2**31 - 1)
    return bool(mallopt(M_MMAP_THRESHOLD, value)) and bool(mallopt(M_TRIM_THRESHOLD, value))
