"""A slow, obviously-right feature-row writer on top of the reference book.

Rows follow :mod:`lobstream.kernels.features`: LOBSTER/DeepLOB column order, the documented
missing-level rule, normalisation in float64 with true divisions, rounded to float32.
"""

from __future__ import annotations

import math

import numpy as np

from lobstream.kernels.dtypes import (
    CODE_EMPTY_BOOK,
    FEATURE_RAW,
    FEATURE_TICKS_FROM_MID,
    FEATURE_ZSCORE,
    SIDE_ASK,
    SIDE_BID,
)
from lobstream.testkit.book import RefBook, RefInstrument


def side_levels(st: RefInstrument, side: int, n: int) -> list[tuple[int, float]]:
    """Top ``n`` levels of a side, padded by the missing-level rule (one tick further out,
    size 0)."""
    lv = st.levels(side, n)
    step = 1 if side == SIDE_ASK else -1
    while len(lv) < n:
        lv.append((lv[-1][0] + step, 0.0))
    return lv


def row(st: RefInstrument, kind: int, nlev: int, params) -> np.ndarray:
    """The feature row of one (two-sided) book, float32 (4 * nlev,)."""
    bb, ba = st.best_bid(), st.best_ask()
    mid = (bb + ba) / 2
    asks, bids = side_levels(st, SIDE_ASK, nlev), side_levels(st, SIDE_BID, nlev)

    def px(p: int) -> float:
        if kind == FEATURE_ZSCORE:
            return (p - params[0]) / params[1]
        if kind == FEATURE_TICKS_FROM_MID:
            return (p - mid) / params[0]
        assert kind == FEATURE_RAW
        return float(p)

    def sz(s: float) -> float:
        if kind == FEATURE_ZSCORE:
            return (s - params[2]) / params[3]
        if kind == FEATURE_TICKS_FROM_MID:
            return math.log1p(s)
        return s

    out = []
    for (ap, asz), (bp, bsz) in zip(asks, bids, strict=True):
        out += [px(ap), sz(asz), px(bp), sz(bsz)]
    return np.array(out, np.float32)


def rows(
    book: RefBook, events: np.ndarray, kind: int, nlev: int, params
) -> tuple[np.ndarray, list[dict]]:
    """Apply ``events`` to ``book``; return the rows ``(M, 4 * nlev)`` float32 and their meta."""
    out, meta = [], []
    for k in range(len(events)):
        i = book.step(events[k], k)
        if i is None:
            continue
        st = book.inst[i]
        if not st.bids or not st.asks:
            book._count(CODE_EMPTY_BOOK, k)
            continue
        ev = events[k]
        out.append(row(st, kind, nlev, params))
        bb, ba = st.best_bid(), st.best_ask()
        meta.append(
            {
                "ts_event": int(ev["ts_event"]),
                "ts_recv": int(ev["ts_recv"]),
                "seq": int(ev["seq"]),
                "event_index": k,
                "best_bid": bb,
                "best_ask": ba,
                "mid": (bb + ba) / 2,
                "instrument": i,
            }
        )
    return np.array(out, np.float32).reshape(len(out), 4 * nlev), meta
