"""A slow, obviously-right L2 book: plain dicts, one event at a time, no Numba.

It follows the rules of :mod:`lobstream.kernels.book` word for word, so the kernel can be
checked against it exactly (integer state, counts, first indices). It models the kernel's
tick window too (``base``, ``width``), since what is re-centred, dropped or out of range
depends on it; inside the window it is just ``{price: size}`` per side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lobstream.kernels.dtypes import (
    ACTION_CLEAR,
    ACTION_TRADE,
    ACTION_UPDATE,
    CODE_BAD_EVENT,
    CODE_BAD_INSTRUMENT,
    CODE_CROSSED,
    CODE_DROPPED_LEVELS,
    CODE_OUT_OF_RANGE,
    CODE_RECENTRED,
    CODE_SEQ_GAP,
    CODE_STALE_SKIPPED,
    CODE_TIME_BACKWARDS,
    FLAG_LAST,
    N_CODES,
    SIDE_ASK,
    SIDE_BID,
)


@dataclass
class RefInstrument:
    bids: dict[int, float] = field(default_factory=dict)
    asks: dict[int, float] = field(default_factory=dict)
    base: int = 0
    last_seq: int = 0
    last_ts: int | None = None
    stale: bool = False
    healing: bool = False

    def best_bid(self) -> int | None:
        return max(self.bids) if self.bids else None

    def best_ask(self) -> int | None:
        return min(self.asks) if self.asks else None

    def levels(self, side: int, n: int) -> list[tuple[int, float]]:
        book = self.bids if side == SIDE_BID else self.asks
        prices = sorted(book, reverse=(side == SIDE_BID))[:n]
        return [(p, book[p]) for p in prices]


class RefBook:
    """Reference book of ``n`` instruments with a ``width``-tick window each."""

    def __init__(self, n_instruments: int, width: int) -> None:
        self.width = width
        self.inst = [RefInstrument() for _ in range(n_instruments)]
        self.report = np.zeros((2, N_CODES), np.int64)
        self.report[1] = -1

    def _count(self, code: int, k: int, n: int = 1) -> None:
        self.report[0, code] += n
        if self.report[1, code] < 0:
            self.report[1, code] = k

    def step(self, ev, k: int) -> int | None:
        """Apply one event (a record of EVENT_DTYPE); return the instrument id if the book is
        consistent and healthy after it (LAST, not stale, not crossed)."""
        i, action, side = int(ev["instrument"]), int(ev["action"]), int(ev["side"])
        price, size = int(ev["price"]), float(ev["size"])
        if i >= len(self.inst):
            self._count(CODE_BAD_INSTRUMENT, k)
            return None
        if action not in (ACTION_UPDATE, ACTION_CLEAR, ACTION_TRADE):
            self._count(CODE_BAD_EVENT, k)
            return None
        if action != ACTION_CLEAR and (
            side not in (SIDE_BID, SIDE_ASK) or price <= 0 or not math.isfinite(size) or size < 0
        ):
            self._count(CODE_BAD_EVENT, k)
            return None
        st = self.inst[i]
        ts = int(ev["ts_event"])
        # a clear opens a snapshot: it restarts the clock and the sequence
        clear = action == ACTION_CLEAR
        if st.last_ts is not None and ts < st.last_ts and not clear:
            self._count(CODE_TIME_BACKWARDS, k)
            return None
        st.last_ts = ts
        seq = int(ev["seq"])
        if seq != 0:
            if st.last_seq != 0 and seq != st.last_seq + 1 and not clear:
                self._count(CODE_SEQ_GAP, k)
                st.stale, st.healing = True, False
            st.last_seq = seq
        if action == ACTION_CLEAR:
            st.bids.clear()
            st.asks.clear()
            st.healing = st.stale
        elif st.stale and not st.healing:
            self._count(CODE_STALE_SKIPPED, k)
            return None
        elif action == ACTION_UPDATE:
            self._update(st, side, price, size, k)
        if not int(ev["flags"]) & FLAG_LAST:
            return None
        if st.healing:
            st.stale = st.healing = False
        bb, ba = st.best_bid(), st.best_ask()
        if bb is not None and ba is not None and bb >= ba:
            self._count(CODE_CROSSED, k)
            st.stale = True
            return None
        return i

    def _update(self, st: RefInstrument, side: int, price: int, size: float, k: int) -> None:
        w = self.width
        book = st.bids if side == SIDE_BID else st.asks
        if not st.base <= price < st.base + w:
            if size == 0:
                self._count(CODE_OUT_OF_RANGE, k)
                return
            if not st.bids and not st.asks:
                st.base = price - w // 2
            else:
                if side == SIDE_BID:
                    improves = not st.bids or price > max(st.bids)
                else:
                    improves = not st.asks or price < min(st.asks)
                if not improves:
                    self._count(CODE_OUT_OF_RANGE, k)
                    return
                st.base = price - w // 2
                self._count(CODE_RECENTRED, k)
                dropped = 0
                for side_book in (st.bids, st.asks):
                    for p in [p for p in side_book if not st.base <= p < st.base + w]:
                        del side_book[p]
                        dropped += 1
                if dropped:
                    self._count(CODE_DROPPED_LEVELS, k, dropped)
        if size > 0:
            book[price] = size
        else:
            book.pop(price, None)

    def apply(self, events: np.ndarray) -> list[tuple[int, int]]:
        """Apply a batch; return ``(event_index, instrument)`` of every consistent LAST."""
        due = []
        for k in range(len(events)):
            i = self.step(events[k], k)
            if i is not None:
                due.append((k, i))
        return due


# --------------------------------------------------------------------- stream generation ---
# Hypothesis strategies for event streams that exercise every rule: levels near and far from
# the touch, deletes (size 0) of the touch, crossing prices, clears (snapshots), trades,
# sequence gaps, time going backwards, and malformed events.


def event_streams(
    n_instruments: int = 2, max_events: int = 120, center: int = 1_000, clean: bool = False
):
    """A hypothesis strategy of EVENT_DTYPE arrays. Unless ``clean``, it also draws malformed
    events, bad instrument ids, sequence gaps and time going backwards; clean streams only
    go stale by crossing, so they reach the crossed-book and feature-row paths more often."""
    from hypothesis import strategies as st

    from lobstream.kernels.dtypes import EVENT_DTYPE

    dirty = not clean
    one = st.tuples(
        st.sampled_from([*range(n_instruments)] * 6 + [n_instruments] * dirty),  # instrument
        st.sampled_from([ACTION_UPDATE] * 14 + [ACTION_CLEAR, ACTION_TRADE] + [3] * dirty),
        st.sampled_from([SIDE_BID] * 6 + [SIDE_ASK] * 6 + [2] * dirty),  # side
        st.one_of(  # distance from the centre, away from the other side
            st.integers(-2, 12), st.integers(0, 3), st.integers(-400, 400)
        ),
        st.sampled_from(
            [0.0] * 4 + [1.0, 2.0, 3.5, 10.0, 100.0] * 2 + [-1.0, math.nan, math.inf] * dirty
        ),
        st.booleans(),  # LAST
        st.sampled_from([1] * 60 + [0, 0] + [2] * dirty),  # seq step (0: unsequenced, 2: gap)
        st.sampled_from([0, 1, 1, 1, 7] * 3 + [-5] * dirty),  # ts step
        st.booleans() if dirty else st.just(False),  # price 0 (drawn with off == 0 only)
    )

    @st.composite
    def build(draw):
        rows = draw(st.lists(one, min_size=min(30, max_events), max_size=max_events))
        ev = np.zeros(len(rows), EVENT_DTYPE)
        ts, seqs = 1_000, {}
        for k, (i, action, side, off, size, last, dseq, dts, zero) in enumerate(rows):
            ts += dts
            seqs[i] = seqs.get(i, 0) + dseq
            price = center + (1 + off if side == SIDE_ASK else -1 - off)
            if zero and off == 0 and action == ACTION_UPDATE:
                price = 0
            ev[k] = (ts, 0, seqs[i] if dseq else 0, price, size, i, side, action,
                     FLAG_LAST if last else 0)  # fmt: skip
        return ev

    return build()
