"""Mirrored ring buffers of feature rows, the live book+row kernel, and the window gather.

Each instrument owns ``2T`` rows. Row number ``c`` (0, 1, 2, ...) lives at slot ``c % T`` and
again at ``c % T + T``, so after every kernel call the last ``T`` rows are the contiguous block
``rows[i, count % T : count % T + T]``, oldest first: a window is always one ``(T, F)`` slice,
ready to copy into a ``(B, 1, T, F)`` batch with no reordering. Before ``T`` rows have been
written the block starts with zero rows (never written), then the rows so far, oldest first.

Within a call the kernel writes each row once, at ``c % T``, and at the end copies to the upper
half only the rows of the current lap that the call wrote: the only mirror copies a window can
show. Nothing reads the ring during a call, so readers see the same ring as if every row had
been written twice; a long replay writes half the bytes.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from lobstream.kernels._jit import njit
from lobstream.kernels._loop import MODE_RING, _run
from lobstream.kernels.book import (
    BookState,
    apply_events,
    check_events,
    check_report,
    new_book,
    new_report,
)
from lobstream.kernels.dtypes import (
    ACTION_CLEAR,
    DEFAULT_LEVELS,
    DEFAULT_WINDOW,
    EVENT_DTYPE,
    FLAG_LAST,
    ROW_META_DTYPE,
    SIDE_ASK,
    SIDE_BID,
)
from lobstream.kernels.features import (
    FeatureSpec,
    _spec_args,
    events_to_rows,
    zscore_spec,
)
from lobstream.kernels.windows import copy_window

logger = logging.getLogger(__name__)

__all__ = [
    "RingState",
    "new_ring",
    "window_view",
    "apply_events_rows",
    "gather_windows",
    "events_to_rows",
    "warmup",
]


class RingState(NamedTuple):
    """Per-instrument mirrored rings of feature rows.

    Attributes
    ----------
    rows : ndarray (N, 2T, F) float32
        Each row stored twice (slots ``c % T`` and ``c % T + T``; the second copy is made at
        the end of the kernel call, see the module docstring).
    count : ndarray (N,) int64
        Rows written so far per instrument.
    meta : ndarray (N,) ROW_META_DTYPE
        Meta of the newest row of each instrument (valid once ``count > 0``).
    slot : ndarray (N,) int64
        ``count % T``, advanced by the kernel with ``count``, so writing a row needs no
        64-bit division (measured ~10% of the book + row + ring rate here). Anything that
        sets ``count`` by hand must set ``slot = count % T`` too.
    first : ndarray (N,) int64
        Scratch of the row kernel: ``count`` at the instrument's first row of the current call,
        -1 between calls. The kernel writes each row once and its mirror copy at the end of
        the call, only where the final window shows it (half the bytes in a long replay).
    """

    rows: np.ndarray
    count: np.ndarray
    meta: np.ndarray
    slot: np.ndarray
    first: np.ndarray

    @property
    def window(self) -> int:
        return self.rows.shape[1] // 2

    @property
    def n_features(self) -> int:
        return self.rows.shape[2]


def new_ring(
    n_instruments: int, window: int = DEFAULT_WINDOW, levels: int = DEFAULT_LEVELS
) -> RingState:
    """Empty rings: ``n_instruments`` x ``2 * window`` rows of ``4 * levels`` float32.

    Memory is ``32 * n_instruments * window * levels`` bytes (128 MB for 10,000 x 100 x 10).
    """
    if n_instruments < 1 or window < 1 or levels < 1:
        raise ValueError(
            f"n_instruments, window and levels must be >= 1, got {n_instruments}, {window}, "
            f"{levels}"
        )
    return RingState(
        rows=np.zeros((int(n_instruments), 2 * int(window), 4 * int(levels)), np.float32),
        count=np.zeros(int(n_instruments), np.int64),
        meta=np.zeros(int(n_instruments), ROW_META_DTYPE),
        slot=np.zeros(int(n_instruments), np.int64),
        first=np.full(int(n_instruments), -1, np.int64),
    )


def window_view(ring: RingState, i: int) -> np.ndarray:
    """The last ``T`` rows of instrument ``i``, oldest first: a (T, F) float32 view (no copy).

    The view aliases the ring: copy it if it must survive the next write.
    """
    t = ring.window
    s = int(ring.count[i]) % t
    return ring.rows[i, s : s + t]


def _check_ring(book: BookState, ring: RingState, spec: FeatureSpec) -> None:
    if ring.rows.shape[0] != book.bid.shape[0]:
        raise ValueError(
            f"ring holds {ring.rows.shape[0]} instruments but the book {book.bid.shape[0]}; "
            "make both with the same n_instruments"
        )
    if ring.rows.shape[2] != 4 * spec.levels:
        raise ValueError(
            f"ring rows have {ring.rows.shape[2]} features but the spec has {spec.levels} levels "
            f"(F = {4 * spec.levels}); make the ring with levels={spec.levels}"
        )


def apply_events_rows(
    book: BookState, ring: RingState, spec: FeatureSpec, events: np.ndarray, report: np.ndarray
) -> None:
    """Apply events to the book and, after each consistent LAST event, write a row to the ring.

    Parameters
    ----------
    book : BookState
        Modified in place.
    ring : RingState
        Rows, counts and meta modified in place.
    spec : FeatureSpec
        Normalisation; ``ring`` must have ``F = 4 * spec.levels``.
    events : ndarray (n,) EVENT_DTYPE
    report : ndarray (2, N_CODES) int64
        Accumulated in place.
    """
    events = check_events(events)
    check_report(report)
    _check_ring(book, ring, spec)
    kind, nlev, a0, a1, a2, a3 = _spec_args(spec, book)
    _run(*book, events, report, MODE_RING, *ring, kind, nlev, a0, a1, a2, a3)


def gather_windows(ring: RingState, instruments: np.ndarray, out: np.ndarray) -> None:
    """Copy the current windows of ``instruments`` into ``out[:B]`` (the window copy of
    :mod:`lobstream.kernels.windows`, at each instrument's ``count % T``).

    Parameters
    ----------
    ring : RingState
    instruments : ndarray (B,) int64
        Instrument ids, each < N; repeats allowed.
    out : ndarray (Bmax, 1, T, F) float32, C-contiguous, Bmax >= B
        ``out[:B]`` overwritten in place; the rest untouched.
    """
    t, f = ring.window, ring.n_features
    instruments = np.ascontiguousarray(instruments, dtype=np.int64)
    b = instruments.shape[0]
    if (
        out.dtype != np.float32
        or out.ndim != 4
        or out.shape[1:] != (1, t, f)
        or out.shape[0] < b
        or not out.flags.c_contiguous
    ):
        raise ValueError(
            f"out must be C-contiguous float32 of shape (>= {b}, 1, {t}, {f}), got "
            f"{out.dtype} {out.shape}"
        )
    if b and (instruments.min() < 0 or instruments.max() >= ring.rows.shape[0]):
        raise ValueError(
            f"instrument ids must be in 0..{ring.rows.shape[0] - 1}, got "
            f"{instruments.min()}..{instruments.max()}"
        )
    _gather(ring.rows, ring.count, instruments, out)


def warmup() -> None:
    """Run every kernel once on tiny inputs, so a daemon pays compile or cache-load at start
    and the first market event never compiles. Covers writable and read-only event arrays
    (``np.frombuffer`` of a ZeroMQ frame is read-only, a distinct Numba type)."""
    ev = np.zeros(3, EVENT_DTYPE)
    ev["instrument"] = 0
    ev["ts_event"] = [1, 2, 3]
    ev["seq"] = [1, 2, 3]
    ev["action"] = [ACTION_CLEAR, 0, 0]
    ev["side"] = [0, SIDE_BID, SIDE_ASK]
    ev["price"] = [0, 100, 101]
    ev["size"] = [0.0, 1.0, 1.0]
    ev["flags"] = [0, 0, FLAG_LAST]
    ro = ev.copy()
    ro.flags.writeable = False
    spec = zscore_spec(100.0, 1.0, 0.0, 1.0, levels=2)
    for events in (ev, ro):
        book, ring, rep = new_book(1, 8), new_ring(1, 2, 2), new_report()
        apply_events(book, events, rep)
        apply_events_rows(new_book(1, 8), ring, spec, events, new_report())
        rows = np.zeros((3, 8), np.float32)
        events_to_rows(new_book(1, 8), spec, events, rows, np.zeros(3, ROW_META_DTYPE), rep)
    out = np.zeros((1, 1, 2, 8), np.float32)
    gather_windows(ring, np.zeros(1, np.int64), out)
    logger.debug("kernels warm")


# ----------------------------------------------------------------------------- kernels ---


@njit
def _gather(rows, count, instruments, out):
    t = rows.shape[1] // 2
    for b in range(instruments.shape[0]):
        i = instruments[b]
        copy_window(rows, i, count[i] % t, out, b)  # the mirror: rows s .. s + T - 1
