"""replay/readers/_mbo: MBO aggregation and top-N diffs against plain-Python references."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lobstream.kernels import book as B
from lobstream.kernels.dtypes import (
    ACTION_CLEAR,
    ACTION_TRADE,
    ACTION_UPDATE,
    FLAG_LAST,
    FLAG_SNAPSHOT,
)
from lobstream.replay.readers import _mbo as mbo

UNITS = 10  # price units per tick


def _naive_mbo(recs):
    """Obviously-right: orders dict, levels summed from scratch after each record; returns the
    expected level totals after every record and the expected unknown-order count."""
    orders: dict[int, tuple[int, int, int, int]] = {}
    out = []
    unknown = 0
    for inst, a, s, px, sz, oid, _ in recs:
        side = {"B": 0, "A": 1}.get(s, -1)
        if a in "AM" and side >= 0:
            if sz > 0:
                orders[oid] = (inst, side, px // UNITS, sz)
            else:
                orders.pop(oid, None)
        elif a == "C":
            if oid not in orders:
                unknown += 1
            else:
                i, sd, p, left = orders[oid]
                left -= min(sz, left)
                if left:
                    orders[oid] = (i, sd, p, left)
                else:
                    del orders[oid]
        elif a == "R":
            orders = {k: v for k, v in orders.items() if v[0] != inst}
        lv: dict = {}
        for i, sd, p, q in orders.values():
            lv[(i, sd, p)] = lv.get((i, sd, p), 0) + q
        out.append(lv)
    return out, unknown


_rec = st.tuples(
    st.integers(0, 1),  # instrument
    st.sampled_from("AAAACCMTFR"),
    st.sampled_from("BA"),
    st.integers(1, 12).map(lambda t: t * UNITS),
    st.integers(0, 5),
    st.integers(1, 8),  # order id: few, so cancels and modifies hit resting orders
    st.sampled_from([0, 128, 128, 160]),
)


def _columns(recs):
    inst = np.array([r[0] for r in recs], np.uint32)
    action = np.array([ord(r[1]) for r in recs], np.uint8)
    side = np.array([ord(r[2]) for r in recs], np.uint8)
    price = np.array([r[3] for r in recs], np.int64)
    size = np.array([r[4] for r in recs], np.int64)
    oid = np.array([r[5] for r in recs], np.uint64)
    flags = np.array([r[6] for r in recs], np.uint8)
    ts = np.arange(len(recs), dtype=np.int64)
    return ts, action, side, price, size, oid, flags, inst


def _replay_levels(events, n_inst=2):
    """Level totals implied by the events (a dict book)."""
    lv: dict = {}
    for e in events:
        i = int(e["instrument"])
        if e["action"] == ACTION_CLEAR:
            lv = {k: v for k, v in lv.items() if k[0] != i}
        elif e["action"] == ACTION_UPDATE:
            key = (i, int(e["side"]), int(e["price"]))
            if e["size"] == 0:
                lv.pop(key, None)
            else:
                lv[key] = e["size"]
    return lv


@settings(max_examples=30)
@given(st.lists(_rec, min_size=1, max_size=60), st.integers(1, 60))
def test_mbo_aggregation_equals_naive(recs, split):
    """Events, applied to a dict book, give the naive level totals after every record, also
    when the records arrive in two calls (state carried)."""
    cols = _columns(recs)
    want, unknown = _naive_mbo(recs)
    state = mbo.new_mbo_state()
    counts = mbo.new_counts()
    units = np.full(2, UNITS, np.int64)
    k = min(split, len(recs))
    ev = np.concatenate(
        [
            mbo.mbo_to_events(state, *(c[:k] for c in cols), units, counts),
            mbo.mbo_to_events(state, *(c[k:] for c in cols), units, counts),
        ]
    )
    assert counts[0, mbo.MBO_UNKNOWN_ORDER] == unknown
    assert _replay_levels(ev) == {k: float(v) for k, v in want[-1].items()}
    # internal level totals agree too
    assert dict(state.levels) == want[-1]
    # seq: contiguous per instrument over book events; trades are not sequenced
    for i in (0, 1):
        s = ev["seq"][(ev["instrument"] == i) & (ev["action"] != ACTION_TRADE)]
        assert s.tolist() == list(range(1, len(s) + 1))
    assert np.all(ev["seq"][ev["action"] == ACTION_TRADE] == 0)


def test_mbo_last_moves_to_previous_event_when_record_emits_nothing():
    recs = [
        (0, "A", "B", 50, 2, 1, 0),  # no LAST
        (0, "F", "A", 50, 1, 9, 128),  # a fill with LAST emits nothing: LAST goes back
        (0, "A", "A", 60, 1, 2, 160),  # snapshot flag carried
        (0, "T", "N", 60, 1, 0, 128),
    ]
    ev = mbo.mbo_to_events(
        mbo.new_mbo_state(), *_columns(recs), np.full(1, UNITS), mbo.new_counts()
    )
    assert ev["flags"].tolist() == [FLAG_LAST, FLAG_SNAPSHOT | FLAG_LAST]


def test_mbo_bad_records_are_counted_not_raised():
    recs = [
        (0, "A", "X", 50, 2, 1, 128),  # bad side
        (0, "A", "B", 55, 2, 2, 128),  # off the tick grid (units of 10)
        (0, "Z", "B", 50, 2, 3, 128),  # bad action
        (0, "C", "B", 50, 2, 4, 128),  # unknown order
        (0, "A", "B", 50, 2, 5, 128),
    ]
    cols = list(_columns(recs))
    cols[3][1] = 55
    counts = mbo.new_counts()
    ev = mbo.mbo_to_events(mbo.new_mbo_state(), *cols, np.full(1, UNITS), counts)
    assert counts[0, mbo.MBO_BAD_SIDE] == 1 and counts[1, mbo.MBO_BAD_SIDE] == 0
    assert counts[0, mbo.MBO_BAD_PRICE] == 1 and counts[1, mbo.MBO_BAD_PRICE] == 1
    assert counts[0, mbo.MBO_BAD_ACTION] == 1 and counts[1, mbo.MBO_BAD_ACTION] == 2
    assert counts[0, mbo.MBO_UNKNOWN_ORDER] == 1
    assert len(ev) == 1 and ev["price"][0] == 5


# --- top-N diffs ------------------------------------------------------------------------------

DEPTH = 4


@st.composite
def _books(draw):
    """A sequence of top-N books (prices distinct per side, bids below asks), some flagged."""
    n = draw(st.integers(1, 12))
    out = []
    for _ in range(n):
        nb = draw(st.integers(0, DEPTH))
        na = draw(st.integers(0, DEPTH))
        bids = sorted(draw(st.sets(st.integers(90, 100), min_size=nb, max_size=nb)), reverse=True)
        asks = sorted(draw(st.sets(st.integers(101, 111), min_size=na, max_size=na)))
        bsz = [float(draw(st.integers(1, 3))) for _ in bids]
        asz = [float(draw(st.integers(1, 3))) for _ in asks]
        snap = draw(st.booleans())
        out.append((bids, bsz, asks, asz, snap))
    return out


def _pad(px, sz):
    p = np.full(DEPTH, mbo.MISSING, np.int64)
    s = np.zeros(DEPTH)
    p[: len(px)] = px
    s[: len(sz)] = sz
    return p, s


@given(_books())
def test_levels_diff_rebuilds_every_record(books):
    state = mbo.new_levels_state(DEPTH)
    bk = B.new_book(1, 64)
    rep = B.new_report()
    for bids, bsz, asks, asz, snap in books:
        bp, bs = _pad(bids, bsz)
        ap, as_ = _pad(asks, asz)
        flags = np.array([FLAG_LAST | (FLAG_SNAPSHOT if snap else 0)], np.uint8)
        ev = mbo.levels_to_events(
            state,
            np.zeros(1, np.int64),
            np.zeros(1, np.uint32),
            bp[None],
            bs[None],
            ap[None],
            as_[None],
            flags,
        )
        B.apply_events(bk, ev, rep)
        assert B.levels(bk, 0, 0, DEPTH) == list(zip(bids, bsz, strict=True))
        assert B.levels(bk, 0, 1, DEPTH) == list(zip(asks, asz, strict=True))
        if len(ev):
            assert ev["flags"][-1] & FLAG_LAST
    assert rep[0, 0] == 0  # never crossed after a LAST


def test_levels_first_record_and_snapshot_runs_clear():
    state = mbo.new_levels_state(1)
    one = np.ones((1, 1), np.int64)

    def rec(px, snap):
        fl = np.array([FLAG_LAST | (FLAG_SNAPSHOT if snap else 0)], np.uint8)
        return mbo.levels_to_events(
            state,
            np.zeros(1, np.int64),
            np.zeros(1, np.uint32),
            one * px,
            np.ones((1, 1)),
            one * (px + 1),
            np.ones((1, 1)),
            fl,
        )

    assert rec(10, False)["action"].tolist() == [ACTION_CLEAR, 0, 0]
    assert rec(10, False).size == 0  # no change, no event
    assert rec(11, True)["action"][0] == ACTION_CLEAR  # a snapshot run starts: clear
    assert ACTION_CLEAR not in rec(12, True)["action"].tolist()  # same run: diffs


def test_levels_trade_without_book():
    state = mbo.new_levels_state(1)
    miss = np.full((1, 1), mbo.MISSING, np.int64)
    ev = mbo.levels_to_events(
        state,
        np.zeros(1, np.int64),
        np.zeros(1, np.uint32),
        miss,
        np.zeros((1, 1)),
        miss,
        np.zeros((1, 1)),
        np.array([FLAG_LAST], np.uint8),
        has_book=np.zeros(1, np.uint8),
        trade_px=np.array([7]),
        trade_sz=np.array([2.0]),
        trade_side=np.array([1], np.uint8),
    )
    assert ev["action"].tolist() == [ACTION_TRADE] and ev["flags"][0] == FLAG_LAST
    assert state.have_prev[0] == 0
