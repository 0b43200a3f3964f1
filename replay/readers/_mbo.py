"""Source books -> canonical level updates: order-level (MBO) aggregation and top-N diffs.

Two conversions that file readers need and that must not cost Python per record:

- :func:`mbo_to_events`: market-by-order records (add / cancel / modify / fill / trade /
  clear) aggregated into price levels. Every change of a level's total resting size becomes one
  ``ACTION_UPDATE`` carrying the new total (0 removes the level); a clear (``R``) becomes
  ``ACTION_CLEAR``; a trade (``T``) becomes ``ACTION_TRADE``. Fills (``F``) change nothing:
  the venue follows them with the cancel that removes the filled quantity (Databento's
  convention for CME and Nasdaq), so counting them too would remove it twice.
- :func:`levels_to_events`: top-N book records (Databento MBP-1/MBP-10, Tardis
  ``book_snapshot_N``) turned into the updates that take the previous record's levels to this
  record's levels (deletes for prices that left, updates for new or changed sizes). The first
  record of an instrument, and the first of a run of records flagged SNAPSHOT, become
  ``ACTION_CLEAR`` + the full book, all ``FLAG_SNAPSHOT``.

LAST: the last event a record emits carries ``FLAG_LAST`` when the record has it; a record with
LAST that emits nothing (a fill, a trade with no side, a book that did not change) moves LAST
onto the instrument's previous event of the same call if that one lacks it, so a packet never
ends without a consistent point. ``seq`` is a per-instrument counter over book events (trades
get 0, not sequenced), contiguous: these sources carry no per-instrument chain to check.

Kernels count source conditions (``MBO_*`` codes) in ``counts`` ``(2, N_MBO_CODES)`` int64:
row 0 the count, row 1 the index of the first record that raised it (or -1); they never
raise. State is preallocated arrays plus two typed dicts (orders and level totals), no jitclass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import types
from numba.typed import Dict

from lobstream.kernels._jit import njit
from lobstream.kernels.dtypes import (
    ACTION_CLEAR,
    ACTION_TRADE,
    ACTION_UPDATE,
    EVENT_DTYPE,
    FLAG_LAST,
    FLAG_SNAPSHOT,
    SIDE_ASK,
    SIDE_BID,
)

# Source-record conditions (MBO and top-N conversion).
MBO_UNKNOWN_ORDER = 0  # cancel / fill for an order id never added (file starts mid-session)
MBO_MODIFY_UNKNOWN = 1  # modify of an unknown order: treated as an add
MBO_OVER_CANCEL = 2  # cancel larger than the order's resting size: clamped to it
MBO_BAD_PRICE = 3  # add / modify with an undefined (no price) or off-tick price: skipped
MBO_BAD_SIDE = 4  # add / modify with a side other than bid or ask: skipped
MBO_BAD_ACTION = 5  # an action letter that is not A C M F T R N: skipped
MBO_TRADE_NO_SIDE = 6  # trade with side N (no aggressor): not emitted
MBO_DUPLICATE_ADD = 7  # add of an order id already resting: replaces it
N_MBO_CODES = 8
MBO_CODE_NAMES = (
    "unknown_order",
    "modify_unknown",
    "over_cancel",
    "bad_price",
    "bad_side",
    "bad_action",
    "trade_no_side",
    "duplicate_add",
)

#: price (ticks) of an absent level in the inputs of :func:`levels_to_events`
MISSING = np.iinfo(np.int64).min
#: Databento's "no price" sentinel (INT64_MAX) in fixed-point inputs
UNDEF_PRICE = np.iinfo(np.int64).max

# action and side letters as bytes
_A, _C, _M, _F, _T, _R, _N = (ord(c) for c in "ACMFTRN")
_SB, _SA = ord("B"), ord("A")
_DB_FLAG_LAST = 128
_DB_FLAG_SNAPSHOT = 32

_ORDER_VALUE = types.UniTuple(types.int64, 4)  # instrument, side, price ticks, size
_LEVEL_KEY = types.UniTuple(types.int64, 3)  # instrument, side, price ticks


@dataclass
class MboState:
    """Order-book state carried between calls (and between files of one read).

    Attributes
    ----------
    orders : numba typed Dict uint64 -> (instrument, side, price ticks, size) int64
    levels : numba typed Dict (instrument, side, price ticks) -> total size int64
    seq : ndarray (N,) uint64
        Last sequence number given to a book event of each instrument.
    """

    orders: Dict
    levels: Dict
    seq: np.ndarray


def new_mbo_state(n_instruments: int = 1) -> MboState:
    """Empty order book; instrument capacity grows on demand."""
    return MboState(
        orders=Dict.empty(key_type=types.uint64, value_type=_ORDER_VALUE),
        levels=Dict.empty(key_type=_LEVEL_KEY, value_type=types.int64),
        seq=np.zeros(max(int(n_instruments), 1), np.uint64),
    )


def new_counts() -> np.ndarray:
    """``(2, N_MBO_CODES)`` int64: row 0 counts, row 1 first record index (-1)."""
    c = np.zeros((2, N_MBO_CODES), np.int64)
    c[1, :] = -1
    return c


@njit
def _count(counts, code, k):
    counts[0, code] += 1
    if counts[1, code] < 0:
        counts[1, code] = k


@njit
def _emit(out, n, ts, seq, price, size, inst, side, action, flags, last_out):
    e = out[n]
    e.ts_event = ts
    e.ts_recv = 0
    e.seq = seq
    e.price = price
    e.size = size
    e.instrument = inst
    e.side = side
    e.action = action
    e.flags = flags
    last_out[inst] = n
    return n + 1


@njit
def _level_add(levels, seqs, out, n, ts, inst, side, px, delta, snap, last_out):
    key = (inst, side, px)
    tot = levels.get(key, 0) + delta
    if tot <= 0:
        tot = 0
        if key in levels:
            del levels[key]
    else:
        levels[key] = tot
    seqs[inst] += 1
    return _emit(out, n, ts, seqs[inst], px, float(tot), inst, side, ACTION_UPDATE, snap, last_out)


@njit
def _mbo_kernel(
    ts,
    action,
    side,
    price,
    size,
    order_id,
    flags,
    inst,
    units,
    orders,
    levels,
    seqs,
    out,
    last_out,
    counts,
):
    n = 0
    for k in range(ts.shape[0]):
        i = np.int64(inst[k])
        a = action[k]
        start = n
        snap = FLAG_SNAPSHOT if flags[k] & _DB_FLAG_SNAPSHOT else 0
        sd = -1
        if side[k] == _SB:
            sd = SIDE_BID
        elif side[k] == _SA:
            sd = SIDE_ASK
        if a == _A or a == _M:
            if sd < 0:
                _count(counts, MBO_BAD_SIDE, k)
                continue
            if price[k] == UNDEF_PRICE or price[k] % units[i] != 0:
                _count(counts, MBO_BAD_PRICE, k)
                continue
            px = price[k] // units[i]
            oid = order_id[k]
            sz = np.int64(size[k])
            if oid in orders:
                if a == _A:
                    _count(counts, MBO_DUPLICATE_ADD, k)
                o = orders[oid]
                if o[0] == i and o[1] == sd and o[2] == px:
                    n = _level_add(
                        levels, seqs, out, n, ts[k], o[0], sd, px, sz - o[3], snap, last_out
                    )
                else:
                    n = _level_add(
                        levels, seqs, out, n, ts[k], o[0], o[1], o[2], -o[3], snap, last_out
                    )
                    n = _level_add(levels, seqs, out, n, ts[k], i, sd, px, sz, snap, last_out)
            else:
                if a == _M:
                    _count(counts, MBO_MODIFY_UNKNOWN, k)
                n = _level_add(levels, seqs, out, n, ts[k], i, sd, px, sz, snap, last_out)
            if sz > 0:
                orders[oid] = (i, np.int64(sd), px, sz)
            elif oid in orders:
                del orders[oid]
        elif a == _C:
            oid = order_id[k]
            if oid not in orders:
                _count(counts, MBO_UNKNOWN_ORDER, k)
            else:
                o = orders[oid]
                sz = np.int64(size[k])
                if sz > o[3]:
                    _count(counts, MBO_OVER_CANCEL, k)
                    sz = o[3]
                n = _level_add(levels, seqs, out, n, ts[k], o[0], o[1], o[2], -sz, snap, last_out)
                left = o[3] - sz
                if left > 0:
                    orders[oid] = (o[0], o[1], o[2], left)
                else:
                    del orders[oid]
        elif a == _R:
            dead = []
            for oid, o in orders.items():
                if o[0] == i:
                    dead.append(oid)
            for oid in dead:
                del orders[oid]
            dead_lv = []
            for key in levels.keys():
                if key[0] == i:
                    dead_lv.append(key)
            for key in dead_lv:
                del levels[key]
            seqs[i] += 1
            n = _emit(out, n, ts[k], seqs[i], 0, 0.0, i, 0, ACTION_CLEAR, FLAG_SNAPSHOT, last_out)
        elif a == _T:
            if sd < 0:
                _count(counts, MBO_TRADE_NO_SIDE, k)
            elif price[k] == UNDEF_PRICE or price[k] % units[i] != 0:
                _count(counts, MBO_BAD_PRICE, k)
            else:
                n = _emit(
                    out,
                    n,
                    ts[k],
                    0,
                    price[k] // units[i],
                    float(size[k]),
                    i,
                    sd,
                    ACTION_TRADE,
                    0,
                    last_out,
                )
        elif a == _F or a == _N:
            pass
        else:
            _count(counts, MBO_BAD_ACTION, k)
            continue
        if flags[k] & _DB_FLAG_LAST:
            if n > start:
                out[n - 1].flags |= FLAG_LAST
            elif last_out[i] >= 0:
                out[last_out[i]].flags |= FLAG_LAST
    return n


def _grow_seq(state: MboState, n: int) -> None:
    if state.seq.shape[0] < n:
        seq = np.zeros(max(n, 2 * state.seq.shape[0]), np.uint64)
        seq[: state.seq.shape[0]] = state.seq
        state.seq = seq


def mbo_to_events(
    state: MboState,
    ts_event: np.ndarray,
    action: np.ndarray,
    side: np.ndarray,
    price: np.ndarray,
    size: np.ndarray,
    order_id: np.ndarray,
    flags: np.ndarray,
    instrument: np.ndarray,
    tick_units: np.ndarray,
    counts: np.ndarray,
) -> np.ndarray:
    """Aggregate MBO records into level-update events.

    Parameters
    ----------
    state : MboState
        Orders and level totals; modified in place (its ``seq`` may be replaced to grow).
    ts_event : ndarray (n,) int64, ns
    action, side : ndarray (n,) uint8
        ASCII letters (``b"A"``, ``b"B"``, ...), as in Databento records.
    price : ndarray (n,) int64
        Fixed-point price (Databento: units of 1e-9); ``UNDEF_PRICE`` for none.
    size : ndarray (n,) int64 or uint32
    order_id : ndarray (n,) uint64
    flags : ndarray (n,) uint8
        Databento flags (128 LAST, 32 SNAPSHOT).
    instrument : ndarray (n,) uint32
        lobstream instrument ids.
    tick_units : ndarray (N,) int64
        Tick size of each instrument id in price units (ES: 250_000_000 for 0.25).
    counts : ndarray (2, N_MBO_CODES) int64
        Condition counts, modified in place (see :func:`new_counts`).

    Returns
    -------
    ndarray (m,) EVENT_DTYPE, m <= 2 n
    """
    n = ts_event.shape[0]
    for name, arr in (
        ("action", action),
        ("side", side),
        ("price", price),
        ("size", size),
        ("order_id", order_id),
        ("flags", flags),
        ("instrument", instrument),
    ):
        if arr.shape != (n,):
            raise ValueError(f"{name} has shape {arr.shape}; expected ({n},) like ts_event")
    if counts.shape != (2, N_MBO_CODES):
        raise ValueError(f"counts has shape {counts.shape}; expected (2, {N_MBO_CODES})")
    n_inst = int(instrument.max()) + 1 if n else 0
    if n_inst > tick_units.shape[0] or (n and tick_units[np.unique(instrument)].min() <= 0):
        raise ValueError("tick_units must hold a positive tick for every instrument id used")
    _grow_seq(state, n_inst)
    out = np.zeros(2 * n, EVENT_DTYPE)
    last_out = np.full(max(state.seq.shape[0], 1), -1, np.int64)
    m = _mbo_kernel(
        np.ascontiguousarray(ts_event, np.int64),
        np.ascontiguousarray(action, np.uint8),
        np.ascontiguousarray(side, np.uint8),
        np.ascontiguousarray(price, np.int64),
        np.ascontiguousarray(size, np.int64),
        np.ascontiguousarray(order_id, np.uint64),
        np.ascontiguousarray(flags, np.uint8),
        np.ascontiguousarray(instrument, np.uint32),
        np.ascontiguousarray(tick_units, np.int64),
        state.orders,
        state.levels,
        state.seq,
        out,
        last_out,
        counts,
    )
    return out[:m]


# --- top-N books ---------------------------------------------------------------------------


@njit
def _levels_kernel(
    ts,
    inst,
    bpx,
    bsz,
    apx,
    asz,
    flags,
    has_book,
    tr_px,
    tr_sz,
    tr_side,
    prev_bpx,
    prev_bsz,
    prev_apx,
    prev_asz,
    have_prev,
    prev_snap,
    seqs,
    out,
    last_out,
):
    n = 0
    depth = bpx.shape[1]
    for k in range(ts.shape[0]):
        i = np.int64(inst[k])
        start = n
        snapf = flags[k] & FLAG_SNAPSHOT
        if tr_side[k] <= 1:
            n = _emit(
                out, n, ts[k], 0, tr_px[k], tr_sz[k], i, tr_side[k], ACTION_TRADE, 0, last_out
            )
        if has_book[k]:
            full = have_prev[i] == 0 or (snapf != 0 and prev_snap[i] == 0)
            if full:
                seqs[i] += 1
                n = _emit(
                    out, n, ts[k], seqs[i], 0, 0.0, i, 0, ACTION_CLEAR, FLAG_SNAPSHOT, last_out
                )
            for s in range(2):
                px = bpx if s == 0 else apx
                sz = bsz if s == 0 else asz
                ppx = prev_bpx if s == 0 else prev_apx
                psz = prev_bsz if s == 0 else prev_asz
                fl = FLAG_SNAPSHOT if full else snapf
                if not full:
                    # levels that left the book
                    for j in range(depth):
                        p = ppx[i, j]
                        if p == MISSING:
                            continue
                        gone = True
                        for q in range(depth):
                            if px[k, q] == p:
                                gone = False
                                break
                        if gone:
                            seqs[i] += 1
                            n = _emit(
                                out, n, ts[k], seqs[i], p, 0.0, i, s, ACTION_UPDATE, fl, last_out
                            )
                for q in range(depth):
                    p = px[k, q]
                    if p == MISSING:
                        continue
                    changed = True
                    if not full:
                        for j in range(depth):
                            if ppx[i, j] == p:
                                changed = psz[i, j] != sz[k, q]
                                break
                    if changed:
                        seqs[i] += 1
                        n = _emit(
                            out, n, ts[k], seqs[i], p, sz[k, q], i, s, ACTION_UPDATE, fl, last_out
                        )
                for q in range(depth):
                    ppx[i, q] = px[k, q]
                    psz[i, q] = sz[k, q]
            have_prev[i] = 1
            prev_snap[i] = 1 if snapf else 0
        if flags[k] & FLAG_LAST:
            if n > start:
                out[n - 1].flags |= FLAG_LAST
            elif last_out[i] >= 0:
                out[last_out[i]].flags |= FLAG_LAST
    return n


@dataclass
class LevelsState:
    """Previous top-N book per instrument, for :func:`levels_to_events`.

    Attributes
    ----------
    bid_px, ask_px : ndarray (N, depth) int64, ticks (``MISSING`` = no level)
    bid_sz, ask_sz : ndarray (N, depth) float64
    have_prev, prev_snap : ndarray (N,) uint8
    seq : ndarray (N,) uint64
    """

    bid_px: np.ndarray
    bid_sz: np.ndarray
    ask_px: np.ndarray
    ask_sz: np.ndarray
    have_prev: np.ndarray
    prev_snap: np.ndarray
    seq: np.ndarray


def new_levels_state(depth: int, n_instruments: int = 1) -> LevelsState:
    """Empty previous-book state for books of ``depth`` levels per side."""
    n = max(int(n_instruments), 1)
    return LevelsState(
        bid_px=np.full((n, depth), MISSING, np.int64),
        bid_sz=np.zeros((n, depth), np.float64),
        ask_px=np.full((n, depth), MISSING, np.int64),
        ask_sz=np.zeros((n, depth), np.float64),
        have_prev=np.zeros(n, np.uint8),
        prev_snap=np.zeros(n, np.uint8),
        seq=np.zeros(n, np.uint64),
    )


def _grow_levels(st: LevelsState, n: int) -> None:
    cur = st.seq.shape[0]
    if cur >= n:
        return
    m = max(n, 2 * cur)
    depth = st.bid_px.shape[1]
    fresh = new_levels_state(depth, m)
    for name in ("bid_px", "bid_sz", "ask_px", "ask_sz", "have_prev", "prev_snap", "seq"):
        getattr(fresh, name)[:cur] = getattr(st, name)
        setattr(st, name, getattr(fresh, name))


def levels_to_events(
    state: LevelsState,
    ts_event: np.ndarray,
    instrument: np.ndarray,
    bid_px: np.ndarray,
    bid_sz: np.ndarray,
    ask_px: np.ndarray,
    ask_sz: np.ndarray,
    flags: np.ndarray,
    has_book: np.ndarray | None = None,
    trade_px: np.ndarray | None = None,
    trade_sz: np.ndarray | None = None,
    trade_side: np.ndarray | None = None,
) -> np.ndarray:
    """Level updates that take each instrument's previous top-N book to each record's book.

    Parameters
    ----------
    state : LevelsState
        Previous books; modified in place (arrays replaced when instruments are added).
    ts_event : ndarray (n,) int64
    instrument : ndarray (n,) uint32
    bid_px, ask_px : ndarray (n, depth) int64
        Level prices in ticks, best first; ``MISSING`` where a level is absent.
    bid_sz, ask_sz : ndarray (n, depth) float64
    flags : ndarray (n,) uint8
        lobstream flags of each record: ``FLAG_LAST``, ``FLAG_SNAPSHOT``.
    has_book : ndarray (n,) uint8, optional
        0 where the record carries no book (e.g. a trade record with undefined levels): only
        its trade is emitted. Default all 1.
    trade_px, trade_sz, trade_side : ndarray (n,), optional
        A trade to emit before the record's updates where ``trade_side <= 1`` (255 = none).

    Returns
    -------
    ndarray (m,) EVENT_DTYPE
    """
    n, depth = bid_px.shape
    if depth != state.bid_px.shape[1]:
        raise ValueError(
            f"records have {depth} levels; this state was made for {state.bid_px.shape[1]}"
        )
    for name, arr in (("bid_sz", bid_sz), ("ask_px", ask_px), ("ask_sz", ask_sz)):
        if arr.shape != (n, depth):
            raise ValueError(f"{name} has shape {arr.shape}; expected {(n, depth)}")
    if has_book is None:
        has_book = np.ones(n, np.uint8)
    if trade_side is None:
        trade_side = np.full(n, 255, np.uint8)
        trade_px = np.zeros(n, np.int64)
        trade_sz = np.zeros(n, np.float64)
    _grow_levels(state, int(instrument.max()) + 1 if n else 0)
    out = np.zeros(n * (4 * depth + 2) if n else 0, EVENT_DTYPE)
    last_out = np.full(state.seq.shape[0], -1, np.int64)
    m = _levels_kernel(
        np.ascontiguousarray(ts_event, np.int64),
        np.ascontiguousarray(instrument, np.uint32),
        np.ascontiguousarray(bid_px, np.int64),
        np.ascontiguousarray(bid_sz, np.float64),
        np.ascontiguousarray(ask_px, np.int64),
        np.ascontiguousarray(ask_sz, np.float64),
        np.ascontiguousarray(flags, np.uint8),
        np.ascontiguousarray(has_book, np.uint8),
        np.ascontiguousarray(trade_px, np.int64),
        np.ascontiguousarray(trade_sz, np.float64),
        np.ascontiguousarray(trade_side, np.uint8),
        state.bid_px,
        state.bid_sz,
        state.ask_px,
        state.ask_sz,
        state.have_prev,
        state.prev_snap,
        state.seq,
        out,
        last_out,
    )
    return out[:m]
