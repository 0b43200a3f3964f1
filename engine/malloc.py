"""Keep freed memory in the process (glibc): the model thread must not page-fault its
activations back in on every call.

PyTorch's CPU allocator frees each call's activations when the call ends (a few MB at the
daemon's batch sizes). On a thread other than the main one glibc serves them from a
per-thread arena, which it trims back to the OS when they are freed, and large blocks above
the mmap threshold are unmapped outright; the next call then faults every page in again, each
fault zeroing a page. Measured on the 2-core machine at 200,000 events/s: the inference thread
took ~67,000 minor page faults a second and spent ~86 us of CPU per window against ~62 us for
the same model alone; with the thresholds below it took none and ran at ~60 us per window.

Fixing the mmap threshold and turning trimming off makes glibc reuse the freed blocks. The
cost is that the process keeps its peak heap (tens of MB here) instead of returning it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above half its 64 MiB arena heap size (on 64-bit)
MMAP_THRESHOLD = 32 << 20  # blocks below 32 MiB come from the heap, never a fresh mmap
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt's largest value: keep up to 2 GiB of free heap top


def hold_freed_memory() -> bool:
    """Ask glibc to keep freed blocks for reuse; False (and a debug log) where there is no
    glibc ``mallopt`` (macOS, musl), which changes nothing but speed."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        logger.debug("no mallopt in %s: freed memory is handled as the C library decides", name)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
