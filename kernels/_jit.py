"""One place for Numba compile options, so every kernel is compiled the same way."""

from __future__ import annotations

import numba

# fastmath is off by default: feature rows must match the Python reference to float32
# tolerance and reassociation buys little in these memory-bound kernels.
JIT_OPTIONS = {"cache": True, "nogil": True, "fastmath": False, "boundscheck": False}

# fastmath flag sets of the model kernels (pass as ``njit(fastmath=...)``). Neither has 'nnan'
# or 'ninf', so a NaN in a window stays NaN in its probabilities instead of being assumed away.
# Re-association and contraction let LLVM vectorise the dot products and fuse multiply-adds;
# libm stays exact because BiN-CTABL's float64 statistics (sqrt) must match the module in float64.
FASTMATH_EXACT_LIBM = frozenset({"nsz", "arcp", "contract", "reassoc"})
# Plus approximate libm ('afn'): the incremental kernels are held to torch's float32 answer,
# not a float64 one, and their one libm call is the softmax's exp.
FASTMATH_APPROX_LIBM = FASTMATH_EXACT_LIBM | {"afn"}


def njit(*args, **kwargs):
    """``numba.njit`` with the project's options (explicit kwargs win)."""
    opts = {**JIT_OPTIONS, **kwargs}
    if isinstance(opts["fastmath"], frozenset):
        opts["fastmath"] = set(opts["fastmath"])  # numba takes a set (and keeps it)
    return numba.njit(*args, **opts)
