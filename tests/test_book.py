"""The L2 book kernel against the dict reference, and the rules one by one."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lobstream.kernels.book import (
    DEFAULT_WIDTH,
    apply_events,
    best_prices,
    levels,
    new_book,
    new_report,
)
from lobstream.kernels.dtypes import (
    ACTION_CLEAR,
    ACTION_TRADE,
    ACTION_UPDATE,
    CODE_BAD_EVENT,
    CODE_BAD_INSTRUMENT,
    CODE_CROSSED,
    CODE_DROPPED_LEVELS,
    CODE_NAMES,
    CODE_OUT_OF_RANGE,
    CODE_RECENTRED,
    CODE_SEQ_GAP,
    CODE_STALE_SKIPPED,
    CODE_TIME_BACKWARDS,
    EVENT_DTYPE,
    FLAG_LAST,
    FLAG_SNAPSHOT,
    SIDE_ASK,
    SIDE_BID,
)
from lobstream.testkit.book import RefBook, event_streams

BID, ASK = SIDE_BID, SIDE_ASK


def mk(*rows) -> np.ndarray:
    """Events from (instrument, action, side, price, size, last[, seq[, ts]]) tuples; ts
    defaults to the row number, seq to 0 (unsequenced)."""
    ev = np.zeros(len(rows), EVENT_DTYPE)
    for k, r in enumerate(rows):
        i, action, side, price, size, last = r[:6]
        seq = r[6] if len(r) > 6 else 0
        ts = r[7] if len(r) > 7 else k
        ev[k] = (ts, 0, seq, price, size, i, side, action, FLAG_LAST if last else 0)
    return ev


def upd(i, side, price, size, last=True, seq=0, ts=None):
    return (i, ACTION_UPDATE, side, price, size, last, seq) + (() if ts is None else (ts,))


def assert_same(book, ref: RefBook, report) -> None:
    """Kernel state == reference state, exactly."""
    for i, st_ in enumerate(ref.inst):
        assert best_prices(book, i) == (st_.best_bid(), st_.best_ask()), f"instrument {i}"
        for side in (BID, ASK):
            assert levels(book, i, side, book.width) == st_.levels(side, book.width), (i, side)
            # the top-K cache and level counts are exact, not approximate
            n = int(book.top_n[i, side])
            top = [
                (px, float((book.ask if side == ASK else book.bid)[i, px - int(book.base[i])]))
                for px in (int(book.top_key[i, side, j]) * (1 if side == ASK else -1)
                           for j in range(n))
            ]  # fmt: skip
            assert top == st_.levels(side, book.cached_levels), (i, side)
            assert int(book.n_levels[i, side]) == len(st_.levels(side, book.width))
        assert bool(book.stale[i]) == st_.stale, f"stale of instrument {i}"
        assert bool(book.healing[i]) == st_.healing
        assert int(book.last_seq[i]) == st_.last_seq
        if st_.bids or st_.asks:
            assert int(book.base[i]) == st_.base
    np.testing.assert_array_equal(
        report, ref.report, err_msg=f"report rows: counts, first index; codes {CODE_NAMES}"
    )


@given(st.one_of(event_streams(n_instruments=3), event_streams(n_instruments=3, clean=True)),
       st.integers(0, 200), st.sampled_from([16, 40]), st.sampled_from([1, 3, 10]))  # fmt: skip
def test_book_matches_reference(events, cut, width, cached):
    book, rep = new_book(3, width, levels=cached), new_report()
    ref = RefBook(3, width)
    # two batches: the state must carry across calls; first indices are per batch
    for batch in (events[:cut], events[cut:]):
        apply_events(book, batch, rep)
        ref.apply(batch)
    assert_same(book, ref, rep)


# ------------------------------------------------------------------ rules, one by one ---


def run(rows, n=1, width=64, levels=10):
    book, rep = new_book(n, width, levels=levels), new_report()
    ev = mk(*rows)
    apply_events(book, ev, rep)
    ref = RefBook(n, width)
    ref.apply(ev)
    assert_same(book, ref, rep)
    return book, rep


def test_delete_of_touch_exposes_deeper_level():
    book, _ = run([upd(0, BID, 100, 1), upd(0, BID, 97, 2), upd(0, ASK, 103, 1),
                   upd(0, ASK, 110, 4), upd(0, BID, 100, 0), upd(0, ASK, 103, 0)])  # fmt: skip
    assert best_prices(book, 0) == (97, 110)
    assert levels(book, 0, BID, 5) == [(97, 2.0)]


def test_delete_beyond_full_cache_refills_from_ladder():
    rows = [upd(0, ASK, 100 + j, 1.0 + j) for j in range(6)] + [upd(0, ASK, 101, 0)]
    book, _ = run(rows, levels=3)
    assert levels(book, 0, ASK, 3) == [(100, 1.0), (102, 3.0), (103, 4.0)]
    assert list(book.top_key[0, ASK]) == [100, 102, 103]


def test_recentre_on_improving_price_drops_levels_off_the_edge():
    rows = [upd(0, BID, 1000, 1), upd(0, BID, 990, 1), upd(0, ASK, 1001, 1),
            upd(0, ASK, 1010, 5, last=False), upd(0, ASK, 1040, 5)]  # fmt: skip
    book, rep = run(rows, width=32)
    assert rep[0, CODE_OUT_OF_RANGE] == 1  # 1040 is deeper and outside [984, 1016)
    book, rep = run([*rows, upd(0, BID, 1020, 1, last=False)], width=32)
    # 1020 improves the bid: the window is re-centred on it, [1004, 1036)
    assert rep[0, CODE_RECENTRED] == 1
    assert rep[0, CODE_DROPPED_LEVELS] == 3  # bids 1000, 990 and ask 1001
    assert rep[1, CODE_RECENTRED] == 5
    assert best_prices(book, 0) == (1020, 1010)


def test_out_of_window_delete_is_counted_noop():
    book, rep = run([upd(0, BID, 1000, 1), upd(0, ASK, 1001, 1), upd(0, ASK, 5000, 0)])
    assert rep[0, CODE_OUT_OF_RANGE] == 1
    assert rep[0, CODE_RECENTRED] == 0


def test_first_price_places_window_without_counting():
    book, rep = run([upd(0, BID, 123_456, 1)], width=DEFAULT_WIDTH)
    assert rep[0].sum() == 0
    assert int(book.base[0]) == 123_456 - DEFAULT_WIDTH // 2


def test_crossed_after_last_goes_stale_until_snapshot_heals():
    rows = [
        upd(0, BID, 100, 1), upd(0, ASK, 101, 1),
        upd(0, BID, 102, 1),  # crossed after LAST
        upd(0, BID, 99, 1),  # skipped: stale
        (0, ACTION_CLEAR, 0, 0, 0.0, False),
        upd(0, BID, 98, 1, last=False), upd(0, ASK, 99, 2, last=True),  # heals
        upd(0, BID, 97, 3),
    ]  # fmt: skip
    book, rep = run(rows)
    assert rep[0, CODE_CROSSED] == 1 and rep[1, CODE_CROSSED] == 2
    assert rep[0, CODE_STALE_SKIPPED] == 1
    assert not book.stale[0]
    assert levels(book, 0, BID, 5) == [(98, 1.0), (97, 3.0)]


def test_crossed_inside_a_packet_is_fine_if_uncrossed_by_last():
    rows = [upd(0, BID, 100, 1), upd(0, ASK, 101, 1),
            upd(0, ASK, 99, 1, last=False), upd(0, ASK, 99, 0, last=False),
            upd(0, ASK, 101, 1)]  # fmt: skip
    book, rep = run(rows)
    assert rep[0, CODE_CROSSED] == 0 and not book.stale[0]


def test_seq_gap_marks_stale_and_snapshot_heals():
    rows = [upd(0, BID, 100, 1, seq=1), upd(0, ASK, 101, 1, seq=2),
            upd(0, ASK, 102, 1, seq=4),  # gap: stale, skipped
            upd(0, ASK, 103, 1, seq=5),  # skipped
            (0, ACTION_CLEAR, 0, 0, 0.0, False, 6),
            upd(0, BID, 99, 1, last=False, seq=7), upd(0, ASK, 104, 1, seq=8)]  # fmt: skip
    book, rep = run(rows)
    assert rep[0, CODE_SEQ_GAP] == 1 and rep[1, CODE_SEQ_GAP] == 2
    assert rep[0, CODE_STALE_SKIPPED] == 2
    assert best_prices(book, 0) == (99, 104) and not book.stale[0]


def test_gap_inside_snapshot_stops_healing():
    rows = [upd(0, BID, 100, 1, seq=1), upd(0, BID, 100, 1, seq=3),
            (0, ACTION_CLEAR, 0, 0, 0.0, False, 4),
            upd(0, BID, 99, 1, last=False, seq=6),  # gap inside the snapshot
            upd(0, ASK, 104, 1, seq=7)]  # fmt: skip
    book, rep = run(rows)
    assert book.stale[0] and not book.healing[0]


def test_trades_do_not_touch_the_book():
    book, rep = run([upd(0, BID, 100, 5), (0, ACTION_TRADE, BID, 100, 3.0, True)])
    assert levels(book, 0, BID, 1) == [(100, 5.0)]
    assert rep[0].sum() == 0


def test_time_backwards_is_dropped():
    book, rep = run([upd(0, BID, 100, 5, ts=10), upd(0, BID, 101, 5, ts=9),
                     upd(0, BID, 102, 5, ts=10)])  # fmt: skip
    assert rep[0, CODE_TIME_BACKWARDS] == 1 and rep[1, CODE_TIME_BACKWARDS] == 1
    assert levels(book, 0, BID, 5) == [(102, 5.0), (100, 5.0)]


@pytest.mark.parametrize(
    "row, code",
    [
        ((5, ACTION_UPDATE, BID, 100, 1.0, True), CODE_BAD_INSTRUMENT),
        ((0, 7, BID, 100, 1.0, True), CODE_BAD_EVENT),
        ((0, ACTION_UPDATE, 2, 100, 1.0, True), CODE_BAD_EVENT),
        ((0, ACTION_UPDATE, BID, 0, 1.0, True), CODE_BAD_EVENT),
        ((0, ACTION_UPDATE, BID, -4, 1.0, True), CODE_BAD_EVENT),
        ((0, ACTION_UPDATE, BID, 100, -1.0, True), CODE_BAD_EVENT),
        ((0, ACTION_UPDATE, BID, 100, float("nan"), True), CODE_BAD_EVENT),
        ((0, ACTION_UPDATE, BID, 100, float("inf"), True), CODE_BAD_EVENT),
        ((0, ACTION_TRADE, 3, 100, 1.0, True), CODE_BAD_EVENT),
    ],
)
def test_bad_events_are_counted_and_skipped(row, code):
    book, rep = run([upd(0, BID, 99, 1), row, upd(0, ASK, 101, 1)])
    assert rep[0, code] == 1 and rep[1, code] == 1
    assert rep[0].sum() == 1
    assert best_prices(book, 0) == (99, 101)


def test_snapshot_flag_is_not_required_to_heal():
    ev = mk(upd(0, BID, 100, 1, seq=1), upd(0, BID, 100, 1, seq=9),
            (0, ACTION_CLEAR, 0, 0, 0.0, True, 10))  # fmt: skip
    ev["flags"][2] |= FLAG_SNAPSHOT
    book, rep = new_book(1, 64), new_report()
    apply_events(book, ev, rep)
    assert not book.stale[0] and best_prices(book, 0) == (None, None)


def test_ten_thousand_instruments_in_one_state():
    n = 10_000
    book, rep = new_book(n, width=128, levels=10), new_report()
    assert book.bid.shape == (n, 128)
    rng = np.random.default_rng(7)
    m = 40_000
    ev = np.zeros(m, EVENT_DTYPE)
    ev["instrument"] = rng.integers(0, n, m)
    ev["side"] = rng.integers(0, 2, m)
    ev["price"] = np.where(ev["side"] == BID, 1000 - rng.integers(0, 20, m),
                           1001 + rng.integers(0, 20, m))  # fmt: skip
    ev["size"] = rng.choice([0.0, 1.0, 2.0, 5.0], m)
    ev["ts_event"] = np.arange(m)
    ev["flags"] = FLAG_LAST
    apply_events(book, ev, rep)
    ref = RefBook(n, 128)
    ref.apply(ev)
    assert_same(book, ref, rep)
    # only deletes that reach an instrument before its first level (window not placed yet)
    assert rep[0].sum() == rep[0, CODE_OUT_OF_RANGE]


def test_errors_name_the_problem():
    book = new_book(1, 64)
    with pytest.raises(TypeError, match="EVENT_DTYPE"):
        apply_events(book, np.zeros(3), new_report())
    with pytest.raises(ValueError, match="new_report"):
        apply_events(book, np.zeros(3, EVENT_DTYPE), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="width"):
        new_book(1, 2)


def test_misaligned_events_are_copied_not_compiled_for():
    from lobstream.kernels._loop import _run

    ev = mk(upd(0, BID, 100, 1), upd(0, ASK, 101, 1))
    raw = bytearray(1 + ev.nbytes)
    raw[1:] = ev.tobytes()
    odd = np.frombuffer(raw, EVENT_DTYPE, offset=1)
    assert not odd.flags.aligned
    book = new_book(1, 64)
    apply_events(book, ev[:0], new_report())  # compiled (or loaded) for aligned input
    before = len(_run.signatures)
    apply_events(book, odd, new_report())
    assert len(_run.signatures) == before
    assert best_prices(book, 0) == (100, 101)


def test_strided_and_readonly_events_are_accepted():
    ev = mk(upd(0, BID, 100, 1), upd(0, BID, 50, 1), upd(0, ASK, 101, 1), upd(0, BID, 60, 1))
    book, rep = new_book(1, 256), new_report()
    apply_events(book, ev[::2], rep)
    assert best_prices(book, 0) == (100, 101)
    ro = ev.copy()
    ro.flags.writeable = False
    book2 = new_book(1, 256)
    apply_events(book2, ro, new_report())
    assert levels(book2, 0, BID, 3) == [(100, 1.0), (60, 1.0), (50, 1.0)]
