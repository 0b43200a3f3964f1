"""The L2 book for many instruments at once: a dense price ladder per instrument and side.

Each instrument owns a window of ``W`` consecutive ticks per side, ``bid[i, s]`` / ``ask[i, s]``
being the resting size at price ``base[i] + s`` (0 = no level). A level update is then one store
plus, rarely, a short scan to find the next touch, and the touch is kept as a slot index
(``best_bid`` / ``best_ask``, -1 for an empty side). All state lives in preallocated arrays so a
whole batch is one kernel call with no allocation and no Python per event.

Rules (docs/ARCHITECTURE.md, "Book"), applied per event in this order:

1. ``instrument >= N``: ``CODE_BAD_INSTRUMENT``, skipped.
2. ``action > 2``; or, for updates and trades, ``side > 1``, ``price <= 0``, ``size < 0`` or
   not finite: ``CODE_BAD_EVENT``, skipped (a clear carries no side, price or size).
3. ``ts_event`` earlier than the instrument's previous accepted event: ``CODE_TIME_BACKWARDS``,
   skipped. Skipped events (1-3) change no state at all, their LAST flag included.
4. ``seq`` not previous + 1 (both non-zero): ``CODE_SEQ_GAP``, the instrument becomes stale
   (and an unfinished snapshot stops healing it). The event then goes on to step 5.
   An ``ACTION_CLEAR`` is exempt from 3 and 4: it starts a snapshot, which restarts the
   instrument's clock and sequence at its own ``ts_event`` and ``seq`` whatever came before,
   so a bad record that got through (a far-future time, a huge seq) is healed by the next
   snapshot instead of making every later event look late or out of sequence.
5. ``ACTION_CLEAR`` empties both sides; on a stale instrument it starts a healing snapshot.
   Any other event on a stale instrument that is not healing: ``CODE_STALE_SKIPPED``, skipped.
   Trades do not touch the book.
6. An update outside the window: a delete (size 0) there is a no-op counted
   ``CODE_OUT_OF_RANGE``; on an empty book the window is placed around the price (not
   counted); a price improving its side's touch (or on an empty side) re-centres the window on
   it (``CODE_RECENTRED``, plus one ``CODE_DROPPED_LEVELS`` per non-empty level lost off the
   edge); a deeper price is dropped (``CODE_OUT_OF_RANGE``). Re-centring puts the price in slot
   ``W // 2``.
7. On LAST: a healing instrument heals; then a crossed book (best bid >= best ask) counts
   ``CODE_CROSSED`` and makes the instrument stale. Otherwise the book is consistent and a
   feature row may be written (see :mod:`lobstream.kernels.ring`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lobstream.kernels._loop import KEY_NONE, MODE_BOOK, _run
from lobstream.kernels.dtypes import (
    DEFAULT_LEVELS,
    EVENT_DTYPE,
    N_CODES,
    ROW_META_DTYPE,
    SIDE_ASK,
    SIDE_BID,
)

# ±1,024 ticks around the touch: the real GOOG 10-level LOBSTER sample (tick 0.01) still puts
# 44 of its 165k updates deeper than that (thin books at the open; 318 at ±512, none at
# ±2,048), counted CODE_OUT_OF_RANGE. Memory is 16 bytes per tick and instrument: 328 MB for
# 10,000 instruments at this width; a large universe of liquid instruments can pass
# width=512 or 1024 (82 / 164 MB).
DEFAULT_WIDTH = 2048

_TS_MIN = np.iinfo(np.int64).min


class BookState(NamedTuple):
    """Preallocated book of ``N`` instruments with a window of ``W`` ticks per side.

    Attributes
    ----------
    bid, ask : ndarray (N, W) float64
        Resting size at price ``base[i] + slot``; 0 means no level.
    base : ndarray (N,) int64
        Price in ticks of slot 0.
    best_bid, best_ask : ndarray (N,) int64
        Slot of the touch, or -1 if that side is empty.
    last_seq : ndarray (N,) uint64
        Sequence number of the last accepted sequenced event (0 = none yet).
    last_ts : ndarray (N,) int64
        ``ts_event`` of the last accepted event (int64 min = none yet).
    stale : ndarray (N,) uint8
        1 while the book is not trusted (gap, crossed); no rows are written.
    healing : ndarray (N,) uint8
        1 between the ``ACTION_CLEAR`` of a snapshot and its LAST event on a stale instrument.
    top_key : ndarray (N, 2, K) int64
        Cache of the best ``K`` levels per side (index 0 bid, 1 ask), best first, as sort keys:
        ask price, or minus the bid price (so both sides sort ascending and share one code
        path); unused entries hold int64 max. Kept exact by every update, so a feature row reads ``K`` contiguous entries
        instead of scanning the ladder.
    top_n : ndarray (N, 2) int64
        Number of valid cached levels per side: ``min(K, n_levels)``.
    n_levels : ndarray (N, 2) int64
        Number of non-empty levels per side in the window (so refilling the cache after a
        delete never scans a ladder with nothing left to find).
    top_row : ndarray (N, 4K) float32
        The cached levels normalised for feature rows, in row column order (ask price and
        size of level j at ``4j, 4j+1``, bid at ``4j+2, 4j+3``); exact for ``j < top_n`` of
        each side and, beyond, the missing levels by the features rule (undefined for an
        empty side). Maintained by the row kernels only, so a row is a copy.
    row_spec : ndarray (5,) float64
        The normalisation ``top_row`` holds: feature kind and the kernel's four offset/scale
        parameters; kind -1 = not maintained (a row call rebuilds it first).
    """

    bid: np.ndarray
    ask: np.ndarray
    base: np.ndarray
    best_bid: np.ndarray
    best_ask: np.ndarray
    last_seq: np.ndarray
    last_ts: np.ndarray
    stale: np.ndarray
    healing: np.ndarray
    top_key: np.ndarray
    top_n: np.ndarray
    n_levels: np.ndarray
    top_row: np.ndarray
    row_spec: np.ndarray

    @property
    def n_instruments(self) -> int:
        return self.bid.shape[0]

    @property
    def width(self) -> int:
        return self.bid.shape[1]

    @property
    def cached_levels(self) -> int:
        return self.top_key.shape[2]


def new_book(
    n_instruments: int, width: int = DEFAULT_WIDTH, levels: int = DEFAULT_LEVELS
) -> BookState:
    """An empty book for ``n_instruments`` instruments, ``width`` ticks per side each, caching
    the best ``levels`` levels per side (feature rows can use at most that many).

    Memory is about ``16 * n_instruments * (width + 2 * levels)`` bytes (e.g. 331 MB for
    10,000 x 2,048 x 10, 167 MB at width 1,024).
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if n_instruments < 1:
        raise ValueError(f"n_instruments must be >= 1, got {n_instruments}")
    if width < 4:
        raise ValueError(f"width must be >= 4 ticks, got {width}; the default is {DEFAULT_WIDTH}")
    n, w = int(n_instruments), int(width)
    return BookState(
        bid=np.zeros((n, w), np.float64),
        ask=np.zeros((n, w), np.float64),
        base=np.zeros(n, np.int64),
        best_bid=np.full(n, -1, np.int64),
        best_ask=np.full(n, -1, np.int64),
        last_seq=np.zeros(n, np.uint64),
        last_ts=np.full(n, _TS_MIN, np.int64),
        stale=np.zeros(n, np.uint8),
        healing=np.zeros(n, np.uint8),
        top_key=np.full((n, 2, int(levels)), KEY_NONE, np.int64),
        top_n=np.zeros((n, 2), np.int64),
        n_levels=np.zeros((n, 2), np.int64),
        top_row=np.zeros((n, 4 * int(levels)), np.float32),
        row_spec=np.array([-1.0, 0.0, 0.0, 0.0, 0.0]),
    )


def new_report() -> np.ndarray:
    """A fresh report: ``(2, N_CODES)`` int64, row 0 counts, row 1 first event index (-1)."""
    rep = np.zeros((2, N_CODES), np.int64)
    rep[1, :] = -1
    return rep


def check_events(events: np.ndarray) -> np.ndarray:
    """Return ``events`` as a 1-d C-contiguous EVENT_DTYPE array, or raise naming the problem.

    A strided or misaligned array (``np.frombuffer`` at an odd offset) is copied: the kernels
    are compiled and warmed for aligned contiguous input only, and a copy here costs far less
    than a compile on the hot path.
    """
    if not isinstance(events, np.ndarray) or events.dtype != EVENT_DTYPE:
        found = getattr(events, "dtype", type(events))
        raise TypeError(
            f"events must be a numpy array of EVENT_DTYPE, got {found}; build it with "
            "np.zeros(n, lobstream.kernels.dtypes.EVENT_DTYPE) or a reader"
        )
    if events.ndim != 1:
        raise ValueError(f"events must be 1-d, got shape {events.shape}")
    if not events.flags.c_contiguous or not events.flags.aligned:
        events = events.copy()
    return events


def check_report(report: np.ndarray) -> None:
    if (
        not isinstance(report, np.ndarray)
        or report.dtype != np.int64
        or report.shape != (2, N_CODES)
        or not report.flags.c_contiguous
    ):
        raise ValueError(
            f"report must be a C-contiguous int64 array of shape (2, {N_CODES}); "
            "make it with lobstream.kernels.book.new_report()"
        )


def apply_events(book: BookState, events: np.ndarray, report: np.ndarray) -> None:
    """Apply a batch of events to the book (no feature rows).

    Parameters
    ----------
    book : BookState
        Modified in place.
    events : ndarray (n,) EVENT_DTYPE
        Any instruments, in arrival order.
    report : ndarray (2, N_CODES) int64
        Condition counts and first event index, accumulated in place (see module doc).
    """
    events = check_events(events)
    check_report(report)
    _run(*book, events, report, MODE_BOOK, *_no_rows())


def _no_rows():
    """Placeholder row outputs for book-only mode: same types as real ones, so the one loop
    kernel is compiled once for all modes."""
    return (
        np.zeros((1, 2, 4), np.float32),
        np.zeros(1, np.int64),
        np.zeros(1, ROW_META_DTYPE),
        np.zeros(1, np.int64),
        np.zeros(1, np.int64),
        0,
        1,
        0.0,
        1.0,
        0.0,
        1.0,
    )


def best_prices(book: BookState, i: int) -> tuple[int | None, int | None]:
    """Best bid and best ask of instrument ``i`` in ticks (None for an empty side)."""
    bb, ba, base = int(book.best_bid[i]), int(book.best_ask[i]), int(book.base[i])
    return (base + bb if bb >= 0 else None, base + ba if ba >= 0 else None)


def levels(book: BookState, i: int, side: int, n: int) -> list[tuple[int, float]]:
    """Top ``n`` non-empty levels of ``side`` of instrument ``i``, as (price ticks, size), best
    first. For tests and tools; the kernels never build lists."""
    if side not in (SIDE_BID, SIDE_ASK):
        raise ValueError(f"side must be SIDE_BID (0) or SIDE_ASK (1), got {side}")
    ladder = book.bid[i] if side == SIDE_BID else book.ask[i]
    slots = np.flatnonzero(ladder > 0)
    if side == SIDE_BID:
        slots = slots[::-1]
    base = int(book.base[i])
    return [(base + int(s), float(ladder[s])) for s in slots[:n]]
