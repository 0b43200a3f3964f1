"""Windows of feature rows: ``T`` consecutive rows of a row array, copied into a model batch.

Every model input is made by the one loop here (:func:`copy_window`): the daemon's windows
from the ring, whose mirrored layout keeps each window contiguous
(:func:`lobstream.kernels.ring.gather_windows`), the backtest's windows over each instrument's
rows (:class:`lobstream.models.scoring.WindowScorer`) and training's batches
(:class:`lobstream.models.train.Windows`). A window is never materialised anywhere else: the
copy goes straight into the runner's preallocated input (or a training batch).
"""

from __future__ import annotations

import numpy as np

from lobstream.kernels._jit import njit

__all__ = ["copy_windows", "copy_window"]


def copy_windows(
    rows: np.ndarray, starts: np.ndarray, out: np.ndarray, which: np.ndarray | None = None
) -> None:
    """Copy window ``b`` (rows ``starts[b] .. starts[b] + T - 1``) into ``out[b, 0]``.

    Parameters
    ----------
    rows : ndarray (M, F) or (N, M, F) float32
        Row arrays (one, or N side by side); not modified.
    starts : ndarray (B,) int
        First row of each window, in ``0 .. M - T``.
    out : ndarray (Bmax, 1, T, F) float32, C-contiguous, Bmax >= B
        ``out[:B]`` overwritten in place; the rest untouched. ``T`` is taken from it.
    which : ndarray (B,) int, optional
        For (N, M, F) rows, the row array of each window (default: 0 for every window).
    """
    # the kernel copies each window as one block; every caller's rows are C-contiguous already
    r3 = np.ascontiguousarray(rows[None] if rows.ndim == 2 else rows)
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    b = starts.shape[0]
    if r3.ndim != 3 or r3.dtype != np.float32:
        raise ValueError(f"rows must be (M, F) or (N, M, F) float32, got {rows.dtype} {rows.shape}")
    n, m, f = r3.shape
    if (
        out.dtype != np.float32
        or out.ndim != 4
        or out.shape[1] != 1
        or out.shape[3] != f
        or out.shape[0] < b
        or not out.flags.c_contiguous
    ):
        raise ValueError(
            f"out must be C-contiguous float32 of shape (>= {b}, 1, T, {f}), got "
            f"{out.dtype} {out.shape}"
        )
    t = out.shape[2]
    if b and (starts.min() < 0 or starts.max() > m - t):
        raise ValueError(
            f"window starts must lie in [0, {m - t}] for T={t} over {m} rows, got "
            f"{starts.min()}..{starts.max()}"
        )
    if which is None:
        which = np.zeros(b, np.int64)
    else:
        which = np.ascontiguousarray(which, dtype=np.int64)
        if which.shape != (b,) or (b and (which.min() < 0 or which.max() >= n)):
            raise ValueError(f"which must be (B,) = ({b},) ids in 0..{n - 1}")
    _copy_windows(r3, which, starts, out)


# ----------------------------------------------------------------------------- kernels ---


@njit(inline="always")
def copy_window(rows, k, s, out, b):
    """``out[b, 0] = rows[k, s : s + T]`` for ``out`` (Bmax, 1, T, F): the window copy of
    every kernel (inlined into its callers). Both arrays C-contiguous."""
    # T consecutive rows are one contiguous block on both sides: a flat loop over T * F values
    # runs near memcpy, where a row-by-column loop was ~0.7x of it
    n = out.shape[2] * out.shape[3]
    src = rows[k, s : s + out.shape[2]].reshape(n)
    dst = out[b, 0].reshape(n)
    for j in range(n):
        dst[j] = src[j]


@njit
def _copy_windows(rows, which, starts, out):
    for b in range(starts.shape[0]):
        copy_window(rows, which[b], starts[b], out, b)
