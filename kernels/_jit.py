"""One place for Numba compile options, so every kernel is compiled the same way."""

from __future__ import annotations

import numba

# fastmath is off: feature rows must match the Python reference to float32 tolerance and
# reassociation buys little in these memory-bound kernels.
JIT_OPTIONS = {"cache": True, "nogil": True, "fastmath": False, "boundscheck": False}


def njit(*args, **kwargs):
    """``numba.njit`` with the project's options (explicit kwargs win)."""
    opts = {**JIT_OPTIONS, **kwargs}
    return numba.njit(*args, **opts)
