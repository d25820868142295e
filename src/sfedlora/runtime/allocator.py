"""glibc malloc settings for long tensor workloads, applied by sfedlora's entry point.

Why: with glibc's defaults, large tensors are mmap'ed and returned to the OS on free, so every training
step page-faults its activations in again; on this project's 2-core machines about a quarter of CPU time
went to those page faults. Keeping freed memory in the heap removes them: no mmap for large blocks
(M_MMAP_MAX = 0), a high trim threshold (M_TRIM_THRESHOLD) and top pad (M_TOP_PAD). The price: the
process keeps its peak heap instead of giving it back. Set SFEDLORA_MALLOC_TUNING=0 to leave malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4


TUNED = False  # whether this process's allocator took the settings (part of runtime.timings' situation)


def tune_malloc() -> bool:
    """Apply the settings with mallopt; True if glibc accepted them."""
    global TUNED
    if os.environ.get("SFEDLORA_MALLOC_TUNING", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        TUNED = all(libc.mallopt(param, value) == 1 for param, value in
                    ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 256 << 20)))
        return TUNED
    except (OSError, AttributeError):  # not glibc
        return False
