"""The one event loop behind every event-consuming kernel: book update, then maybe a row.

Why one monolithic function: passing arrays to a called (or Numba-inlined) function on the hot
path makes Numba emit atomic reference-count updates for every array argument, per event,
which measured 20-50x slower than the same code written in one body. So the per-event book
step and the row writer live here, once, and :func:`lobstream.kernels.book.apply_events`
(``MODE_BOOK``), :func:`lobstream.kernels.ring.apply_events_rows` (``MODE_RING``) and
:func:`lobstream.kernels.features.events_to_rows` (``MODE_FLAT``) all run this same loop: the
book arithmetic and the row arithmetic exist once, and live and offline rows are identical.
Only rare paths (re-centring, counting a condition) are separate calls.

Row cache: ``top_row (N, 4K) f4`` holds, in row column order, the normalised values of the
top-K cache's levels (ask price and size of level j at columns ``4j, 4j+1``, bid at ``4j+2,
4j+3``): exact for the cached levels ``j < top_n`` of each side, and beyond them the missing
levels by the features rule (while the side has a level; undefined when it is empty). It moves
in the same shifts as ``top_key``, and a level is normalised once, when it
enters the cache or changes size (missing levels when the side's count or deepest level
changes), so writing a row is a plain copy of ``4L`` floats (plus, for ticks-from-mid, the
``2L`` prices, which move with the mid). ``row_spec (5,) f8`` names
the normalisation the cache holds (kind, a0..a3); a row call with another spec rebuilds every
instrument's cache first, and a book-only call, which does not maintain it, sets kind -1.

The rules are documented in :mod:`lobstream.kernels.book` and :mod:`lobstream.kernels.features`.

Row destination: ``dst`` is 3-d. In ring mode it is the ring ``(N, 2T, F)`` and a row of
instrument ``i`` goes to ``dst[i, c % T]``, ``c % T`` being the ring's ``slot[i]`` (advanced
with ``count``); its mirror copy ``dst[i, c % T + T]`` is written once per call, at the end
(:func:`_mirror`), and only for the rows that the window at the call's final count shows
there: in a long replay most rows are overwritten a lap later before any reader could see
their mirror, so this halves the row bytes written. ``first[i]`` is ``count[i]`` at the
instrument's first row of the call (-1 before), and ``touched`` lists those instruments. In
flat mode ``dst`` is ``rows_out[None]`` ``(1, M, F)`` and row ``m`` goes to ``dst[0, m]``.
``meta`` is indexed by ``i`` (ring: the newest row's meta) or ``m`` (flat); the loop writes
its event index and touch, and :func:`_finish_meta` the rest at the end of the call.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from lobstream.kernels._jit import njit
from lobstream.kernels.dtypes import (
    ACTION_CLEAR,
    ACTION_TRADE,
    ACTION_UPDATE,
    CODE_BAD_EVENT,
    CODE_BAD_INSTRUMENT,
    CODE_CROSSED,
    CODE_DROPPED_LEVELS,
    CODE_EMPTY_BOOK,
    CODE_OUT_OF_RANGE,
    CODE_RECENTRED,
    CODE_SEQ_GAP,
    CODE_STALE_SKIPPED,
    CODE_TIME_BACKWARDS,
    DEFAULT_LEVELS,
    FEATURE_TICKS_FROM_MID,
    FLAG_LAST,
    SIDE_ASK,
    SIDE_BID,
)

# Row width copied by a fixed-size memcpy (the default 10 levels): LLVM lowers it to five
# 32-byte moves with no loop, trip-count or overlap checks; the generic loop that other widths
# take measured ~3% slower on the whole book + row + ring kernel.
FAST_F = 4 * DEFAULT_LEVELS


@intrinsic
def _copy_fast_row(typingctx, dst, doff, src, soff):
    """``dst.flat[doff : doff + FAST_F] = src.flat[soff : soff + FAST_F]`` (1-d float32 C arrays,
    not overlapping, in range: the caller's offsets are row starts)."""
    sig = types.void(dst, types.intp, src, types.intp)

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        ptrs = []
        for arr, off, ty in ((args[0], args[1], signature.args[0]),
                             (args[2], args[3], signature.args[2])):  # fmt: skip
            data = context.make_array(ty)(context, builder, arr).data
            ptrs.append(builder.bitcast(builder.gep(data, [off]), i8p))
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i8p, ir.IntType(64), ir.IntType(1)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.memcpy.p0.p0.i64")
        builder.call(fn, [ptrs[0], ptrs[1], ir.IntType(64)(4 * FAST_F), ir.IntType(1)(0)])
        return context.get_dummy_value()

    return sig, codegen


# unused top-K cache entries: sorts after every real key, so the search needs no count
KEY_NONE = np.iinfo(np.int64).max

U = np.uint64  # array offsets cast to unsigned: no negative-index wraparound code

MODE_BOOK = 0
MODE_RING = 1
MODE_FLAT = 2


@njit
def _count(report, code, k):
    report[0, code] += 1
    if report[1, code] < 0:
        report[1, code] = k


@njit
def _px_value(key, sign, poff, scale):
    """Normalised price of a level from its sort key (``sign`` = 1 ask, -1 bid)."""
    return np.float32((sign * np.float64(key) - poff) * scale)


@njit
def _size_value(size, logsz, off, scale):
    if logsz:
        return np.float32(np.log1p(size))
    return np.float32((size - off) * scale)


@njit
def _fill_top_row(bid, ask, base, top_key, top_n, top_row, i, logsz, a0, a1, a2, a3):
    """Normalise instrument i's cached levels, and its missing ones, into its row cache
    (rare paths only; sizes are read from the ladder)."""
    vs0 = _size_value(0.0, logsz, a2, a3)
    kmax = top_key.shape[2]
    for sd in range(2):
        sign = 1.0 if sd == SIDE_ASK else -1.0
        col = 0 if sd == SIDE_ASK else 2
        nc = top_n[i, sd]
        for j in range(nc):
            key = top_key[i, sd, j]
            top_row[i, 4 * j + col] = _px_value(key, sign, a0, a1)
            size = bid[i, -key - base[i]] if sd == SIDE_BID else ask[i, key - base[i]]
            top_row[i, 4 * j + col + 1] = _size_value(size, logsz, a2, a3)
        if nc > 0:
            last = top_key[i, sd, nc - 1]
            for j in range(nc, kmax):
                top_row[i, 4 * j + col] = _px_value(last + (j - nc + 1), sign, a0, a1)
                top_row[i, 4 * j + col + 1] = vs0


@njit
def _rebuild_top(bid, ask, base, best_bid, best_ask, top_key, top_n, n_levels, i):
    """Recompute instrument i's touch slots, level counts and top-K cache from its ladder
    (rare paths only: a full scan)."""
    w = bid.shape[1]
    nb = 0
    na = 0
    for s in range(w):
        nb += bid[i, s] > 0.0
        na += ask[i, s] > 0.0
    n_levels[i, 0] = nb
    n_levels[i, 1] = na
    kmax = top_key.shape[2]
    for j in range(kmax):
        top_key[i, 0, j] = KEY_NONE
        top_key[i, 1, j] = KEY_NONE
    b0 = base[i]
    n = 0
    best_bid[i] = -1
    for s in range(w - 1, -1, -1):
        if bid[i, s] > 0.0:
            if n == 0:
                best_bid[i] = s
            top_key[i, 0, n] = -(b0 + s)
            n += 1
            if n == kmax:
                break
    top_n[i, 0] = n
    n = 0
    best_ask[i] = -1
    for s in range(w):
        if ask[i, s] > 0.0:
            if n == 0:
                best_ask[i] = s
            top_key[i, 1, n] = b0 + s
            n += 1
            if n == kmax:
                break
    top_n[i, 1] = n


@njit
def _recentre(bid, ask, base, best_bid, best_ask, top_key, top_n, n_levels, i,
              new_base, k, report):  # fmt: skip
    """Move instrument i's window so slot 0 is ``new_base``; levels off the edge are lost.
    The caller refills the row cache."""
    w = bid.shape[1]
    delta = new_base - base[i]
    dropped = 0
    if delta > 0:
        d = min(delta, w)
        for s in range(d):
            dropped += (bid[i, s] > 0.0) + (ask[i, s] > 0.0)
        for s in range(w - d):
            bid[i, s] = bid[i, s + d]
            ask[i, s] = ask[i, s + d]
        for s in range(w - d, w):
            bid[i, s] = 0.0
            ask[i, s] = 0.0
    elif delta < 0:
        d = min(-delta, w)
        for s in range(w - d, w):
            dropped += (bid[i, s] > 0.0) + (ask[i, s] > 0.0)
        for s in range(w - 1, d - 1, -1):
            bid[i, s] = bid[i, s - d]
            ask[i, s] = ask[i, s - d]
        for s in range(d):
            bid[i, s] = 0.0
            ask[i, s] = 0.0
    base[i] = new_base
    # Re-centring is rare: a full rescan is simpler than tracking which levels survived.
    _rebuild_top(bid, ask, base, best_bid, best_ask, top_key, top_n, n_levels, i)
    _count(report, CODE_RECENTRED, k)
    if dropped > 0:
        report[0, CODE_DROPPED_LEVELS] += dropped
        if report[1, CODE_DROPPED_LEVELS] < 0:
            report[1, CODE_DROPPED_LEVELS] = k


@njit
def _clear(bid, ask, best_bid, best_ask, top_key, top_n, n_levels, i):
    w = bid.shape[1]
    for s in range(w):
        bid[i, s] = 0.0
        ask[i, s] = 0.0
    best_bid[i] = -1
    best_ask[i] = -1
    top_n[i, 0] = 0
    top_n[i, 1] = 0
    for j in range(top_key.shape[2]):
        top_key[i, 0, j] = KEY_NONE
        top_key[i, 1, j] = KEY_NONE
    n_levels[i, 0] = 0
    n_levels[i, 1] = 0


@njit
def _prepare_row_cache(bid, ask, base, top_key, top_n, top_row, row_spec, mode, kind,
                       a0, a1, a2, a3):  # fmt: skip
    """Make the row cache hold this call's normalisation; False in book-only mode, which
    does not maintain it."""
    if mode == MODE_BOOK:
        row_spec[0] = -1.0
        return False
    if not (
        row_spec[0] == kind
        and row_spec[1] == a0
        and row_spec[2] == a1
        and row_spec[3] == a2
        and row_spec[4] == a3
    ):
        logsz = kind == FEATURE_TICKS_FROM_MID
        for i in range(top_key.shape[0]):
            _fill_top_row(bid, ask, base, top_key, top_n, top_row, i, logsz, a0, a1, a2, a3)
        row_spec[0] = kind
        row_spec[1] = a0
        row_spec[2] = a1
        row_spec[3] = a2
        row_spec[4] = a3
    return True


@njit
def _mirror(dst, count, slot, first, touched, nt):
    """Copy each touched instrument's rows of the current lap, written in this call, to their
    mirror slots, so its last ``T`` rows are again one block (see the module docstring)."""
    t_ring = dst.shape[1] // 2
    for q in range(nt):
        i = touched[q]
        r = slot[i]
        lo = max(0, r - (count[i] - first[i]))
        dst[i, t_ring + lo : t_ring + r] = dst[i, lo:r]
        first[i] = -1


@njit
def _finish_meta(meta, events, rows, nr):
    """Complete the meta records ``meta[rows[:nr]]`` from the events they name. The row loop
    stores only what the event cannot give back later (its index and the touch then): every
    store there waits behind the ring row's cache misses, and the full record per row
    measured ~8% of the book + row rate."""
    for q in range(nr):
        rec = meta[rows[q]]
        ev = events[rec.event_index]
        rec.ts_event = ev.ts_event
        rec.ts_recv = ev.ts_recv
        rec.seq = ev.seq
        rec.mid = 0.5 * (np.float64(rec.best_bid) + np.float64(rec.best_ask))
        rec.instrument = ev.instrument


@njit
def _run(
    bid, ask, base, best_bid, best_ask, last_seq, last_ts, stale, healing,
    top_key, top_n, n_levels, top_row, row_spec,
    events, report, mode, dst, count, meta, slot, first, kind, nlev, a0, a1, a2, a3,
):  # fmt: skip
    """Consume ``events``; return the number of rows written (flat mode: stops when full)."""
    n = bid.shape[0]
    w = bid.shape[1]
    t_ring = dst.shape[1] // 2
    m_max = dst.shape[1]
    logsz = kind == FEATURE_TICKS_FROM_MID
    vs0 = np.float32(0.0 if logsz else (0.0 - a2) * a3)  # a missing level's size
    kmax = top_key.shape[2]
    f = 4 * nlev
    m = 0
    nev = events.shape[0]
    if mode == MODE_FLAT and m_max == 0:
        return 0
    rows_on = _prepare_row_cache(
        bid, ask, base, top_key, top_n, top_row, row_spec, mode, kind, a0, a1, a2, a3
    )
    # flat views of the top-K, row cache and row destination, indexed with precomputed
    # offsets cast to uint64 (no negative-index wraparound code). The ladders keep 2-d
    # indexing: measured faster there (book-only 20.5 vs 19.1 M events/s).
    tkf = top_key.reshape(-1)
    trf = top_row.reshape(-1)
    tr64 = top_row.reshape(-1).view(np.int64)  # (price, size) pairs of the row cache
    dstf = dst.reshape(-1)
    # instruments with rows in this call, for the mirror copy at the end (ring mode)
    touched = np.empty(min(n, nev) if mode == MODE_RING else 0, np.int64)
    nt = 0
    rw = 4 * kmax  # floats per instrument in top_row
    for k in range(nev):
        ev = events[k]
        # ---- 1-3: reject what cannot be applied; a rejected event changes nothing ----------
        i = np.int64(ev.instrument)
        if i >= n:
            _count(report, CODE_BAD_INSTRUMENT, k)
            continue
        action = ev.action
        if action > ACTION_TRADE:
            _count(report, CODE_BAD_EVENT, k)
            continue
        side = ev.side
        price = ev.price
        size = ev.size
        # "not (size >= 0)" also catches NaN; size - size is 0 only for a finite size, and
        # two plain compares are cheaper than the bit-level class test "size == inf" becomes
        if action != ACTION_CLEAR and (
            side > SIDE_ASK or price <= 0 or not (size >= 0.0 and size - size == 0.0)
        ):
            _count(report, CODE_BAD_EVENT, k)
            continue
        # A clear starts a snapshot, the feed's own statement of the book: it restarts the
        # clock and the sequence, so no earlier record (a far-future or huge-seq one
        # included) can leave the instrument refusing everything that follows. Tested only
        # on the rare paths, so the common event pays nothing for it.
        ts = ev.ts_event
        if ts < last_ts[i] and action != ACTION_CLEAR:
            _count(report, CODE_TIME_BACKWARDS, k)
            continue
        last_ts[i] = ts
        # ---- 4: sequence ---------------------------------------------------------------
        seq = ev.seq
        if seq != 0:
            prev = last_seq[i]
            if prev != 0 and seq != prev + np.uint64(1) and action != ACTION_CLEAR:
                _count(report, CODE_SEQ_GAP, k)
                stale[i] = 1
                healing[i] = 0
            last_seq[i] = seq
        # ---- 5-6: apply ----------------------------------------------------------------
        if action == ACTION_CLEAR:
            # no row-cache work: its entries are defined only for cached levels, now none
            _clear(bid, ask, best_bid, best_ask, top_key, top_n, n_levels, i)
            healing[i] = stale[i]
        elif stale[i] != 0 and healing[i] == 0:
            _count(report, CODE_STALE_SKIPPED, k)
            continue
        elif action == ACTION_UPDATE:
            s = price - base[i]
            if s < 0 or s >= w:
                if size == 0.0:
                    _count(report, CODE_OUT_OF_RANGE, k)
                    s = -1
                elif best_bid[i] < 0 and best_ask[i] < 0:
                    base[i] = price - w // 2
                    s = w // 2
                else:
                    if side == SIDE_BID:
                        improves = best_bid[i] < 0 or s > best_bid[i]
                    else:
                        improves = best_ask[i] < 0 or s < best_ask[i]
                    if improves:
                        _recentre(bid, ask, base, best_bid, best_ask, top_key, top_n,
                                  n_levels, i, price - w // 2, k, report)  # fmt: skip
                        _fill_top_row(bid, ask, base, top_key, top_n, top_row, i, logsz,
                                      a0, a1, a2, a3)  # fmt: skip
                        s = w // 2
                    else:
                        _count(report, CODE_OUT_OF_RANGE, k)
                        s = -1
            if s >= 0:
                sd = np.int64(side)
                if sd == SIDE_BID:
                    old = bid[i, s]
                    bid[i, s] = size
                    key = -price
                    sign = -1.0
                else:
                    old = ask[i, s]
                    ask[i, s] = size
                    key = price
                    sign = 1.0
                col = 2 - 2 * sd  # ask price at 4j, bid price at 4j + 2
                n_levels[i, sd] += (size > 0.0) - (old > 0.0)
                # keep the top-K cache (and its row cache) exact. Fixed-length loops with a
                # computed source index, no early exits: data-dependent branches here
                # mispredict on most events.
                nc = top_n[i, sd]
                kb = (2 * i + sd) * kmax  # this side's cache in tkf
                rb = i * rw + col  # this side's level 0 price in trf
                pb = 2 * i * kmax + 1 - sd  # this side's level 0 (price, size) pair in tr64
                pos = 0
                for j in range(kmax):
                    pos += tkf[U(kb + j)] < key
                if pos < kmax and tkf[U(kb + pos)] == key:
                    if size > 0.0:
                        if rows_on:
                            trf[U(rb + 4 * pos + 1)] = _size_value(size, logsz, a2, a3)
                    else:
                        deepest = tkf[U(kb + nc - 1)]
                        if rows_on:
                            for j in range(kmax - 1):
                                src = j + (j >= pos)
                                tkf[U(kb + j)] = tkf[U(kb + src)]
                                tr64[U(pb + 2 * j)] = tr64[U(pb + 2 * src)]
                        else:
                            for j in range(kmax - 1):
                                src = j + (j >= pos)
                                tkf[U(kb + j)] = tkf[U(kb + src)]
                        tkf[U(kb + kmax - 1)] = KEY_NONE
                        nc -= 1
                        if nc + 1 == kmax and n_levels[i, sd] > nc:
                            # the cache was full: the next level beyond it moves in
                            if sd == SIDE_BID:
                                t = -deepest - base[i] - 1
                                while bid[i, t] == 0.0:  # n_levels says one exists
                                    t -= 1
                                tkf[U(kb + nc)] = -(base[i] + t)
                                sz_in = bid[i, t]
                            else:
                                t = deepest - base[i] + 1
                                while ask[i, t] == 0.0:
                                    t += 1
                                tkf[U(kb + nc)] = base[i] + t
                                sz_in = ask[i, t]
                            if rows_on:
                                c = rb + 4 * nc
                                trf[U(c)] = _px_value(tkf[U(kb + nc)], sign, a0, a1)
                                trf[U(c + 1)] = _size_value(sz_in, logsz, a2, a3)
                            nc += 1
                        top_n[i, sd] = nc
                        if rows_on and 0 < nc < kmax:
                            last = tkf[U(kb + nc - 1)]
                            for j in range(nc, kmax):
                                c = rb + 4 * j
                                trf[U(c)] = _px_value(last + (j - nc + 1), sign, a0, a1)
                                trf[U(c + 1)] = vs0
                elif size > 0.0 and pos < kmax:
                    if rows_on:
                        for j in range(kmax - 1, 0, -1):
                            src = j - (j > pos)
                            tkf[U(kb + j)] = tkf[U(kb + src)]
                            tr64[U(pb + 2 * j)] = tr64[U(pb + 2 * src)]
                    else:
                        for j in range(kmax - 1, 0, -1):
                            src = j - (j > pos)
                            tkf[U(kb + j)] = tkf[U(kb + src)]
                    tkf[U(kb + pos)] = key
                    nc = min(nc + 1, kmax)
                    top_n[i, sd] = nc
                    if rows_on:
                        c = rb + 4 * pos
                        trf[U(c)] = _px_value(key, sign, a0, a1)
                        trf[U(c + 1)] = _size_value(size, logsz, a2, a3)
                        if nc < kmax:
                            last = tkf[U(kb + nc - 1)]
                            for j in range(nc, kmax):
                                c = rb + 4 * j
                                trf[U(c)] = _px_value(last + (j - nc + 1), sign, a0, a1)
                                trf[U(c + 1)] = vs0
                # the touch is the first cached level (KEY_NONE when the side is empty)
                if sd == SIDE_BID:
                    best_bid[i] = -tkf[U(kb)] - base[i] if nc > 0 else -1
                else:
                    best_ask[i] = tkf[U(kb)] - base[i] if nc > 0 else -1
        # ---- 7: end of packet ------------------------------------------------------------
        if not (ev.flags & FLAG_LAST):
            continue
        if healing[i] != 0:
            stale[i] = 0
            healing[i] = 0
        bb = best_bid[i]
        ba = best_ask[i]
        if bb >= 0 and ba >= 0 and bb >= ba:
            _count(report, CODE_CROSSED, k)
            stale[i] = 1
            continue
        if mode == MODE_BOOK:
            continue
        if bb < 0 or ba < 0:
            _count(report, CODE_EMPTY_BOOK, k)
            continue
        # ---- the feature row (rules in lobstream.kernels.features) ----------------------
        if mode == MODE_RING:
            r1 = slot[i]  # count % T, kept beside count: no division per row
            d1 = (i * m_max + r1) * f
            mi = i
            if first[i] < 0:
                first[i] = count[i]
                touched[nt] = i
                nt += 1
        else:
            d1 = m * f
            mi = m
        b0 = base[i]
        mid = 0.5 * (np.float64(b0 + bb) + np.float64(b0 + ba))
        so = i * rw
        if f == FAST_F:
            _copy_fast_row(dstf, d1, trf, so)
        else:
            for c in range(f):
                dstf[U(d1 + c)] = trf[U(so + c)]
        if logsz:
            kb1 = (2 * i + 1) * kmax
            kb0 = 2 * i * kmax
            for lvl in range(nlev):
                dstf[U(d1 + 4 * lvl)] = _px_value(tkf[U(kb1 + lvl)], 1.0, mid, a1)
                dstf[U(d1 + 4 * lvl + 2)] = _px_value(tkf[U(kb0 + lvl)], -1.0, mid, a1)
            # missing levels (thin books only): one tick beyond the previous one; their
            # sizes are in the cache, their prices move with the mid too
            for sd in range(2):
                nc = top_n[i, sd]
                if nc >= nlev:
                    continue
                sign = 1.0 if sd == SIDE_ASK else -1.0
                col = 0 if sd == SIDE_ASK else 2
                last = tkf[U((2 * i + sd) * kmax + nc - 1)]
                for lvl in range(nc, nlev):
                    dstf[U(d1 + 4 * lvl + col)] = _px_value(last + (lvl - nc + 1), sign, mid, a1)
        rec = meta[mi]
        rec.event_index = k
        rec.best_bid = b0 + bb
        rec.best_ask = b0 + ba
        if mode == MODE_RING:
            count[i] += 1
            r1 += 1
            slot[i] = 0 if r1 == t_ring else r1
        else:
            m += 1
            if m == m_max:
                break
    if mode == MODE_RING:
        _mirror(dst, count, slot, first, touched, nt)
        _finish_meta(meta, events, touched, nt)
    elif mode == MODE_FLAT:
        _finish_meta(meta, events, np.arange(m), m)
    return m
