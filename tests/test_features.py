"""Feature rows (ring and flat) against the reference writer; the missing-level rule; specs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lobstream.kernels.book import new_book, new_report
from lobstream.kernels.dtypes import (
    ACTION_UPDATE,
    CODE_EMPTY_BOOK,
    EVENT_DTYPE,
    FEATURE_RAW,
    FEATURE_TICKS_FROM_MID,
    FEATURE_ZSCORE,
    FLAG_LAST,
    ROW_META_DTYPE,
    SIDE_ASK,
    SIDE_BID,
)
from lobstream.kernels.features import (
    FeatureSpec,
    events_to_rows,
    raw_spec,
    ticks_from_mid_spec,
    zscore_spec,
)
from lobstream.kernels.ring import apply_events_rows, new_ring, window_view
from lobstream.testkit.book import RefBook, event_streams
from lobstream.testkit.features import rows as ref_rows

# float32 rounding of values computed in float64 (the kernel multiplies by 1/std where the
# reference divides: a last-bit difference in float64, invisible after rounding to float32
# except at a rounding boundary)
RTOL, ATOL = 2e-7, 1e-6

SPECS = [
    zscore_spec(1000.0, 7.5, 3.0, 20.0, levels=3),
    ticks_from_mid_spec(2.0, levels=4),
    raw_spec(levels=2),
    zscore_spec(990.0, 1.0, 0.0, 1.0, levels=1),
]


def flat(book, spec, events, m=None):
    m = len(events) if m is None else m
    out = np.full((m, 4 * spec.levels), np.nan, np.float32)
    meta = np.zeros(m, ROW_META_DTYPE)
    rep = new_report()
    n = events_to_rows(book, spec, events, out, meta, rep)
    return out[:n], meta[:n], rep


def assert_meta(meta, ref_meta):
    assert len(meta) == len(ref_meta)
    for got, exp in zip(meta, ref_meta, strict=True):
        for key, val in exp.items():
            assert got[key] == val, (key, got, exp)


@given(
    st.one_of(event_streams(n_instruments=2), event_streams(n_instruments=2, clean=True)),
    st.sampled_from(SPECS),
    st.sampled_from([24, 64]),
)
def test_flat_rows_match_reference(events, spec, width):
    book = new_book(2, width, levels=spec.levels)
    out, meta, rep = flat(book, spec, events)
    ref = RefBook(2, width)
    exp, exp_meta = ref_rows(ref, events, spec.kind, spec.levels, spec.params)
    np.testing.assert_allclose(out, exp, rtol=RTOL, atol=ATOL)
    assert_meta(meta, exp_meta)
    np.testing.assert_array_equal(rep, ref.report)


@given(
    event_streams(n_instruments=2, clean=True, max_events=150),
    st.sampled_from(SPECS),
    st.integers(1, 5),
    st.lists(st.integers(0, 150), max_size=4),
)
def test_ring_windows_match_reference(events, spec, window, cuts):
    """Windows and meta equal the reference after every call, whatever the call boundaries
    (the mirror copy and the meta are completed at the end of each call)."""
    book, ring, rep = new_book(2, 64, levels=10), new_ring(2, window, spec.levels), new_report()
    ref = RefBook(2, 64)
    exp, exp_meta = np.zeros((0, 4 * spec.levels), np.float32), []
    bounds = [0, *sorted(min(c, len(events)) for c in cuts), len(events)]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        batch = events[lo:hi]
        apply_events_rows(book, ring, spec, batch, rep)
        r, m = ref_rows(ref, batch, spec.kind, spec.levels, spec.params)
        exp = np.concatenate([exp, np.asarray(r, np.float32).reshape(-1, 4 * spec.levels)])
        exp_meta += m
        np.testing.assert_array_equal(rep, ref.report)
        assert (ring.first == -1).all()  # the kernel's per-call scratch is reset
        for i in range(2):
            mine = [k for k, mm in enumerate(exp_meta) if mm["instrument"] == i]
            assert ring.count[i] == len(mine)
            last = exp[mine[-window:]] if mine else exp[:0]
            win = window_view(ring, i)
            assert win.shape == (window, 4 * spec.levels)
            # before T rows the window starts with never-written (zero) rows
            pad = np.zeros((window - len(last), 4 * spec.levels), np.float32)
            np.testing.assert_allclose(win, np.concatenate([pad, last]), rtol=RTOL, atol=ATOL)
            if mine:  # meta of the newest row (event_index is within its batch in both)
                assert_meta(ring.meta[i : i + 1], [exp_meta[mine[-1]]])


def ev_rows(*rows):
    ev = np.zeros(len(rows), EVENT_DTYPE)
    for k, (side, price, size, last) in enumerate(rows):
        ev[k] = (k, 0, 0, price, size, 0, side, ACTION_UPDATE, FLAG_LAST if last else 0)
    return ev


def test_missing_levels_rule_and_column_order():
    ev = ev_rows((SIDE_BID, 100, 5.0, False), (SIDE_ASK, 103, 7.0, False),
                 (SIDE_ASK, 106, 2.0, True))  # fmt: skip
    out, meta, _ = flat(new_book(1, 64), raw_spec(levels=3), ev)
    # ask px, ask sz, bid px, bid sz per level; missing: one tick further out, size 0
    np.testing.assert_array_equal(out[0], [103, 7, 100, 5, 106, 2, 99, 0, 107, 0, 98, 0])
    assert (meta[0]["best_bid"], meta[0]["best_ask"], meta[0]["mid"]) == (100, 103, 101.5)
    assert meta[0]["event_index"] == 2


def test_ticks_from_mid_and_zscore_values():
    ev = ev_rows((SIDE_BID, 100, 5.0, False), (SIDE_ASK, 102, 7.0, True))
    out, _, _ = flat(new_book(1, 64), ticks_from_mid_spec(0.5, levels=1), ev)
    np.testing.assert_allclose(out[0], [2.0, np.log1p(7.0), -2.0, np.log1p(5.0)], rtol=1e-6)
    out, _, _ = flat(new_book(1, 64), zscore_spec(101.0, 2.0, 6.0, 0.5, levels=1), ev)
    np.testing.assert_allclose(out[0], [0.5, 2.0, -0.5, -2.0], rtol=1e-6)


def test_one_sided_book_writes_no_row():
    ev = ev_rows((SIDE_BID, 100, 5.0, True), (SIDE_ASK, 101, 1.0, True))
    out, meta, rep = flat(new_book(1, 64), raw_spec(1), ev)
    assert len(out) == 1 and meta[0]["event_index"] == 1
    assert rep[0, CODE_EMPTY_BOOK] == 1 and rep[1, CODE_EMPTY_BOOK] == 0


def test_flat_stops_when_full_and_resumes():
    ev = ev_rows((SIDE_BID, 100, 5.0, True), (SIDE_ASK, 101, 1.0, True),
                 (SIDE_ASK, 102, 1.0, True), (SIDE_BID, 99, 1.0, True),
                 (SIDE_BID, 98, 1.0, True))  # fmt: skip
    book = new_book(1, 64)
    out, meta, _ = flat(book, raw_spec(2), ev, m=2)
    assert len(out) == 2 and meta[-1]["event_index"] == 2
    rest, meta2, _ = flat(book, raw_spec(2), ev[meta[-1]["event_index"] + 1 :])
    whole, _, _ = flat(new_book(1, 64), raw_spec(2), ev)
    np.testing.assert_array_equal(np.concatenate([out, rest]), whole)


def test_flat_and_ring_rows_are_identical():
    from lobstream.replay.feed.synthetic import synthetic_events

    ev = synthetic_events(5_000, n_instruments=1, seed=3, last_every_event=True)
    spec = zscore_spec(23_000.0, 50.0, 100.0, 200.0)
    out, _, _ = flat(new_book(1), spec, ev)
    ring = new_ring(1, window=64)
    apply_events_rows(new_book(1), ring, spec, ev, new_report())
    np.testing.assert_array_equal(window_view(ring, 0), out[-64:])


def test_spec_validation_and_round_trip():
    with pytest.raises(ValueError, match="kind"):
        FeatureSpec(9, 10, np.ones(4)).validate()
    with pytest.raises(ValueError, match="std"):
        zscore_spec(0, 0, 0, 1)
    with pytest.raises(ValueError, match="4 finite"):
        FeatureSpec(FEATURE_RAW, 10, np.ones(3)).validate()
    for spec in SPECS:
        back = FeatureSpec.from_dict(spec.to_dict())
        assert back.kind == spec.kind and back.levels == spec.levels
        np.testing.assert_array_equal(back.params, spec.params)
    assert {s.kind for s in SPECS} == {FEATURE_ZSCORE, FEATURE_TICKS_FROM_MID, FEATURE_RAW}


def test_spec_deeper_than_book_cache_is_refused():
    with pytest.raises(ValueError, match="levels=10"):
        flat(new_book(1, 64, levels=5), raw_spec(10), ev_rows((SIDE_BID, 100, 1.0, True)))
    with pytest.raises(ValueError, match="features"):
        apply_events_rows(new_book(1, 64), new_ring(1, 4, 5), raw_spec(10),
                          ev_rows((SIDE_BID, 100, 1.0, True)), new_report())  # fmt: skip
