"""The seeded synthetic market's generator: its own L2 book per instrument, and the events.

The model (what is emitted, how often, and why) is described in
:mod:`lobstream.replay.feed.synthetic`, which checks the arguments and calls :func:`generate`.
All randomness comes from Numba's generator seeded by ``seed``.
"""

from __future__ import annotations

import numpy as np

from lobstream.kernels._jit import njit
from lobstream.kernels.dtypes import (
    ACTION_CLEAR,
    ACTION_TRADE,
    ACTION_UPDATE,
    FLAG_LAST,
    FLAG_SNAPSHOT,
    SIDE_ASK,
    SIDE_BID,
)

GEN_WIDTH = 1024  # ticks of the generator's own ladder per instrument and side
MAX_DEPTH = 40  # no level is ever placed deeper than this from the touch
_EDGE = 128  # re-centre the generator's ladder when the touch comes this close to its edge


@njit
def emit_event(out, m, ts, seq, price, size, inst, side, action, flags):
    """Write event ``m`` of ``out`` (unless ``out`` is full); the next index."""
    if m >= out.shape[0]:
        return m
    rec = out[m]
    rec.ts_event = ts
    rec.ts_recv = 0
    rec.seq = seq
    rec.price = price
    rec.size = size
    rec.instrument = inst
    rec.side = side
    rec.action = action
    rec.flags = flags
    return m + 1


@njit
def _lot():
    # sizes: mostly small round-ish lots with a heavy tail
    return float(1 + int(np.random.exponential(1.0) * np.random.exponential(1.0) * 100.0))


@njit
def _next_level(lad, i, side, s):
    """First non-empty slot at or beyond ``s`` going away from the touch, or -1."""
    w = lad.shape[1]
    if side == SIDE_BID:
        while s >= 0:
            if lad[i, s] > 0.0:
                return s
            s -= 1
    else:
        while s < w:
            if lad[i, s] > 0.0:
                return s
            s += 1
    return -1


@njit
def _snapshot(out, m, ts, seqs, gb, ga, gbase, i, nlev):
    """Emit CLEAR + the top ``nlev`` levels per side of instrument i, and forget deeper ones
    so the generator's book stays the book the consumer sees."""
    w = gb.shape[1]
    seqs[i] += 1
    m = emit_event(out, m, ts, seqs[i], 0, 0.0, i, 0, ACTION_CLEAR, FLAG_SNAPSHOT)
    n_b = 0
    for s in range(w - 1, -1, -1):
        if gb[i, s] > 0.0:
            if n_b < nlev:
                n_b += 1
            else:
                gb[i, s] = 0.0
    n_a = 0
    for s in range(w):
        if ga[i, s] > 0.0:
            if n_a < nlev:
                n_a += 1
            else:
                ga[i, s] = 0.0
    left = n_a + n_b
    for s in range(w - 1, -1, -1):
        if gb[i, s] > 0.0:
            left -= 1
            seqs[i] += 1
            fl = FLAG_SNAPSHOT | (FLAG_LAST if left == 0 else 0)
            m = emit_event(
                out, m, ts, seqs[i], gbase[i] + s, gb[i, s], i, SIDE_BID, ACTION_UPDATE, fl
            )
    for s in range(w):
        if ga[i, s] > 0.0:
            left -= 1
            seqs[i] += 1
            fl = FLAG_SNAPSHOT | (FLAG_LAST if left == 0 else 0)
            m = emit_event(
                out, m, ts, seqs[i], gbase[i] + s, ga[i, s], i, SIDE_ASK, ACTION_UPDATE, fl
            )
    return m


@njit
def _shift(gb, ga, gbase, i, new_base):
    w = gb.shape[1]
    d = new_base - gbase[i]
    tmp_b = gb[i].copy()
    tmp_a = ga[i].copy()
    for s in range(w):
        t = s + d
        if 0 <= t < w:
            gb[i, s] = tmp_b[t]
            ga[i, s] = tmp_a[t]
        else:
            gb[i, s] = 0.0
            ga[i, s] = 0.0
    gbase[i] = new_base


@njit
def _set(lad, best, i, side, s, size):
    """Set a level of the generator's own book and keep its touch slot current."""
    lad[i, s] = size
    if size > 0.0:
        if side == SIDE_BID and s > best[i]:
            best[i] = s
        elif side == SIDE_ASK and s < best[i]:
            best[i] = s
    elif s == best[i]:
        best[i] = _next_level(lad, i, side, s - 1 if side == SIDE_BID else s + 1)


@njit
def generate(out, n_inst, seed, nlev, start_price, near_touch, delete_prob, improve_prob,
             trade_prob, snap_p, gap_prob, end_p, last_every, dt_ns, start_ts):  # fmt: skip
    np.random.seed(seed)
    w = GEN_WIDTH
    gb = np.zeros((n_inst, w), np.float64)
    ga = np.zeros((n_inst, w), np.float64)
    gbb = np.zeros(n_inst, np.int64)
    gba = np.zeros(n_inst, np.int64)
    gbase = np.zeros(n_inst, np.int64)
    seqs = np.zeros(n_inst, np.uint64)
    pending = np.ones(n_inst, np.uint8)  # needs a snapshot before its next packet
    for i in range(n_inst):
        mid = start_price * (1 + i % 7) + np.random.randint(0, 1000)
        gbase[i] = mid - w // 2
        c = w // 2
        for d in range(nlev):
            gb[i, c - 1 - d] = _lot()
            ga[i, c + 1 + d] = _lot()
        gbb[i] = c - 1
        gba[i] = c + 1
    n = out.shape[0]
    m = 0
    ts = np.int64(start_ts)
    geo_p = 1.0 - near_touch  # P(depth >= d + 1 | depth >= d)
    while m < n:
        i = np.random.randint(0, n_inst)
        ts += 1 + np.int64(np.random.exponential(dt_ns))
        if pending[i] != 0 or (snap_p > 0.0 and np.random.random() < snap_p):
            m = _snapshot(out, m, ts, seqs, gb, ga, gbase, i, nlev)
            gbb[i] = _next_level(gb, i, SIDE_BID, w - 1)
            gba[i] = _next_level(ga, i, SIDE_ASK, 0)
            pending[i] = 0
            continue
        while m < n:
            if gbb[i] < _EDGE or gba[i] > w - _EDGE:
                _shift(gb, ga, gbase, i, gbase[i] + (gbb[i] + gba[i]) // 2 - w // 2)
                gbb[i] = _next_level(gb, i, SIDE_BID, w - 1)
                gba[i] = _next_level(ga, i, SIDE_ASK, 0)
            end = last_every or np.random.random() < end_p
            flags = FLAG_LAST if end else 0
            side = np.random.randint(0, 2)
            lad = gb if side == SIDE_BID else ga
            best = gbb if side == SIDE_BID else gba
            touch = best[i]
            away = -1 if side == SIDE_BID else 1
            if np.random.random() < gap_prob:
                seqs[i] += 1  # a lost message: the consumer sees a gap
                pending[i] = 1
            if np.random.random() < trade_prob:
                rest = lad[i, touch]
                q = min(rest, _lot())
                seqs[i] += 1
                tflags = FLAG_LAST if last_every else 0
                m = emit_event(
                    out, m, ts, seqs[i], gbase[i] + touch, q, i, side, ACTION_TRADE, tflags
                )
                remain = rest - q
                # a side is never traded empty: the last level is refilled
                if remain <= 0.0 and _next_level(lad, i, side, touch + away) < 0:
                    remain = _lot()
                _set(lad, best, i, side, touch, remain)
                seqs[i] += 1
                m = emit_event(out, m, ts, seqs[i], gbase[i] + touch, remain, i, side, ACTION_UPDATE,
                          flags)  # fmt: skip
            else:
                spread = gba[i] - gbb[i]
                # improving gets likelier as the spread widens, so it stays a few ticks wide
                if spread >= 2 and np.random.random() < improve_prob * (spread - 1):
                    s = touch - away
                    size = _lot()
                else:
                    d = 0
                    while d < MAX_DEPTH - 1 and np.random.random() < geo_p:
                        d += 1
                    s = touch + away * d
                    if (
                        lad[i, s] > 0.0
                        and np.random.random() < delete_prob
                        and (s != touch or _next_level(lad, i, side, touch + away) >= 0)
                    ):
                        size = 0.0
                    else:
                        size = _lot()
                _set(lad, best, i, side, s, size)
                seqs[i] += 1
                m = emit_event(
                    out, m, ts, seqs[i], gbase[i] + s, size, i, side, ACTION_UPDATE, flags
                )
            if end:
                break
