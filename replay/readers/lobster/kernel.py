"""LOBSTER kernels: integer CSV lines -> values, orderbook rows -> checked levels -> level updates.

Pure: arrays and scalars in, events and the announced-level state out; no I/O, no raising.
The rule ``diff_rows`` implements (which levels get size 0 when they leave the top N) is
documented in :mod:`lobstream.replay.readers.lobster.reader`, which drives these kernels.
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


@njit
def _emit(out, k, ts, seq, price, size, instrument, side, action, flags):
    e = out[k]
    e["ts_event"] = ts
    e["ts_recv"] = 0
    e["seq"] = seq
    e["price"] = price
    e["size"] = size
    e["instrument"] = instrument
    e["side"] = side
    e["action"] = action
    e["flags"] = flags


@njit
def _worse(side, a, b):
    # Deeper on this side: a higher ask or a lower bid.
    return a > b if side == SIDE_ASK else a < b


@njit
def _first_row(out, k, t, seq, r, px, sz, nvis, instrument, st_px, st_sz, st_n):
    """Row ``r`` as the first one: a clear and a snapshot of its levels, which become the
    announced ones. Returns the events written so far."""
    _emit(out, k, t, seq + k, 0, 0.0, instrument, SIDE_BID, ACTION_CLEAR, FLAG_SNAPSHOT)
    k += 1
    for s in range(2):
        st_n[s] = nvis[r, s]
        for j in range(nvis[r, s]):
            _emit(out, k, t, seq + k, px[r, s, j], sz[r, s, j], instrument, s, ACTION_UPDATE,
                  FLAG_SNAPSHOT)  # fmt: skip
            k += 1
            st_px[s, j] = px[r, s, j]
            st_sz[s, j] = sz[r, s, j]
    return k


@njit
def diff_rows(
    px, sz, nvis, ts, mtype, mprice, msize, mdir, instrument, seq0, st_px, st_sz, st_n, out
):
    """Orderbook rows -> events, stopping before ``out`` could overflow.

    px (R, 2, N) i8 ticks and sz (R, 2, N) f8 of the visible levels (side 0 bid, 1 ask, best
    first), nvis (R, 2) i8 real levels per side; ts, mtype, mprice (ticks), msize, mdir (R,) i8
    of the messages. st_px (2, C) i8, st_sz (2, C) f8, st_n (2,) i8: the announced levels,
    modified in place, kept best first (st_n[0] < 0: no row yet, so the first row is a
    clear + snapshot).
    out (M,) EVENT_DTYPE is written from 0. Returns (rows done, events written).
    """
    n_rows = px.shape[0]
    n_lev = px.shape[2]
    cap = st_px.shape[1]
    per_row = 2 + 2 * (cap + 2 * n_lev)
    k = 0
    seq = seq0
    tp = np.empty(cap + n_lev, np.int64)
    tq = np.empty(cap + n_lev, np.float64)
    upd = np.empty((2, n_lev), np.int64)
    nu = np.zeros(2, np.int64)
    for r in range(n_rows):
        if k + per_row > out.shape[0]:
            return r, k
        start = k
        t = ts[r]
        is_trade = mtype[r] == 4 or mtype[r] == 5 or mtype[r] == 6
        aside = SIDE_BID if mdir[r] < 0 else SIDE_ASK
        if st_n[0] < 0:
            k = _first_row(out, k, t, seq, r, px, sz, nvis, instrument, st_px, st_sz, st_n)
            # One LAST per row: on the trade if the first message is one, else on the
            # snapshot's last level (any LAST heals the book kernel's snapshot).
            if not is_trade:
                out[k - 1]["flags"] = FLAG_SNAPSHOT | FLAG_LAST
            if is_trade:
                _emit(
                    out,
                    k,
                    t,
                    seq + k,
                    mprice[r],
                    float(msize[r]),
                    instrument,
                    aside,
                    ACTION_TRADE,
                    FLAG_LAST,
                )
                k += 1
            continue
        if is_trade:
            _emit(
                out, k, t, seq + k, mprice[r], float(msize[r]), instrument, aside, ACTION_TRADE, 0
            )
            k += 1
        # One merge per side of the announced levels (best first) with the row's levels
        # (best first): deletions are written at once, updates after both sides' deletions.
        for s in range(2):
            nv = nvis[r, s]
            full = nv == n_lev
            ns = st_n[s]
            i = 0
            v = 0
            m = 0
            nu[s] = 0
            while i < ns or v < nv:
                if i < ns and v < nv and st_px[s, i] == px[r, s, v]:
                    if st_sz[s, i] != sz[r, s, v]:
                        upd[s, nu[s]] = v
                        nu[s] += 1
                    tp[m] = px[r, s, v]
                    tq[m] = sz[r, s, v]
                    m += 1
                    i += 1
                    v += 1
                elif v < nv and (i >= ns or _worse(s, st_px[s, i], px[r, s, v])):
                    upd[s, nu[s]] = v
                    nu[s] += 1
                    tp[m] = px[r, s, v]
                    tq[m] = sz[r, s, v]
                    m += 1
                    v += 1
                else:
                    p = st_px[s, i]
                    if (not full) or (not _worse(s, p, px[r, s, n_lev - 1])):
                        _emit(out, k, t, seq + k, p, 0.0, instrument, s, ACTION_UPDATE, 0)
                        k += 1
                    else:
                        tp[m] = p
                        tq[m] = st_sz[s, i]
                        m += 1
                    i += 1
            # Beyond capacity: forget the deepest announced levels. They lie beyond the
            # covered range (cap > N), so the top N is unaffected.
            while m > cap:
                m -= 1
                _emit(out, k, t, seq + k, tp[m], 0.0, instrument, s, ACTION_UPDATE, 0)
                k += 1
            for j in range(m):
                st_px[s, j] = tp[j]
                st_sz[s, j] = tq[j]
            st_n[s] = m
        for s in range(2):
            for j in range(nu[s]):
                v = upd[s, j]
                _emit(out, k, t, seq + k, px[r, s, v], sz[r, s, v], instrument, s, ACTION_UPDATE, 0)
                k += 1
        if k > start:
            out[k - 1]["flags"] |= FLAG_LAST
    return n_rows, k


PARSE_OK = 0
PARSE_BAD_FIELD = 1  # empty field, stray character, or too many digits
PARSE_COLUMNS = 2  # not ncols fields on the line


@njit
def parse_int_csv(buf, ncols, time_col, out, bad):
    """Parse lines of comma-separated integers; one column may be a decimal time.

    buf (B,) uint8 holds whole lines, each ending in a newline. out (R, ncols) int64 receives
    the values, bad (R,) uint8 a PARSE_* code per line (the values of a bad line are
    unspecified). Column ``time_col`` (or -1) is non-negative decimal seconds, written as exact
    nanoseconds: a 10th decimal rounds half up, further decimals are ignored (float artefacts
    of the source). Returns the number of lines parsed.
    """
    r = 0
    c = 0
    val = 0
    ndig = 0
    neg = False
    in_frac = False
    frac = 0
    up = False
    err = PARSE_OK
    for i in range(buf.shape[0]):
        ch = buf[i]
        if 48 <= ch <= 57:
            d = ch - 48
            if in_frac:
                if frac < 9:
                    val = val * 10 + d
                    frac += 1
                elif frac == 9:
                    up = d >= 5
                    frac += 1
            else:
                val = val * 10 + d
                ndig += 1
        elif ch == 44 or ch == 10:
            if ndig == 0 or ndig > 18:
                err = PARSE_BAD_FIELD
            if c == time_col:
                for _ in range(9 - min(frac, 9)):
                    val *= 10
                if up:
                    val += 1
            if c < ncols:
                out[r, c] = -val if neg else val
            c += 1
            val = 0
            ndig = 0
            neg = False
            in_frac = False
            frac = 0
            up = False
            if ch == 10:
                if c != ncols and err == PARSE_OK:
                    err = PARSE_COLUMNS
                bad[r] = err
                r += 1
                c = 0
                err = PARSE_OK
        elif ch == 45 and ndig == 0 and not neg and c != time_col:
            neg = True
        elif ch == 46 and c == time_col and not in_frac and ndig > 0:
            in_frac = True
        elif ch != 13:
            err = PARSE_BAD_FIELD
    return r


BOOK_OK = 0
BOOK_NON_POSITIVE_PRICE = 1
BOOK_BAD_SIZE = 2  # a real level with size <= 0, or a dummy level with a non-zero size
BOOK_OFF_GRID = 3
BOOK_UNORDERED = 4  # not best first, or a real level after a dummy one


@njit
def prepare_book(ob, dummy_ask, dummy_bid, divisor, px, sz, nvis, code, col):
    """Check orderbook rows and split them by side, in one pass.

    ob (R, 4 N) int64 raw rows (ask px, ask sz, bid px, bid sz per level). Writes px (R, 2, N)
    int64 ticks and sz (R, 2, N) float64 (side 0 bid, 1 ask), nvis (R, 2) int64 real levels per
    side, and per row the first problem: code (R,) uint8 BOOK_* and col (R,) int64 its column.
    """
    n_rows = ob.shape[0]
    n_lev = ob.shape[1] // 4
    for r in range(n_rows):
        code[r] = BOOK_OK
        col[r] = -1
        for s in range(2):
            off = 2 if s == 0 else 0
            dummy = dummy_bid if s == 0 else dummy_ask
            n = 0
            for j in range(n_lev):
                c = 4 * j + off
                p = ob[r, c]
                q = ob[r, c + 1]
                px[r, s, j] = 0
                sz[r, s, j] = 0.0
                bad = BOOK_OK
                if p == dummy:
                    if q != 0:
                        bad = BOOK_BAD_SIZE
                elif n < j:
                    bad = BOOK_UNORDERED
                elif p <= 0:
                    bad = BOOK_NON_POSITIVE_PRICE
                elif q <= 0:
                    bad = BOOK_BAD_SIZE
                elif p % divisor != 0:
                    bad = BOOK_OFF_GRID
                else:
                    t = p // divisor
                    if n > 0 and (t >= px[r, s, n - 1] if s == 0 else t <= px[r, s, n - 1]):
                        bad = BOOK_UNORDERED
                    px[r, s, n] = t
                    sz[r, s, n] = q
                    n += 1
                if bad != BOOK_OK and code[r] == BOOK_OK:
                    code[r] = bad
                    col[r] = c + 1 if bad == BOOK_BAD_SIZE else c
            nvis[r, s] = n
