"""The synthetic market: deterministic, well-formed, and shaped like a real book."""

from __future__ import annotations

import numpy as np
import pytest

from lobstream.kernels.book import apply_events, best_prices, levels, new_book, new_report
from lobstream.kernels.dtypes import (
    ACTION_CLEAR,
    ACTION_TRADE,
    ACTION_UPDATE,
    CODE_NAMES,
    CODE_SEQ_GAP,
    CODE_STALE_SKIPPED,
    EVENT_DTYPE,
    FLAG_LAST,
    FLAG_SNAPSHOT,
)
from lobstream.replay.feed.synthetic import synthetic_events


def test_deterministic_by_seed():
    a = synthetic_events(20_000, n_instruments=5, seed=11)
    b = synthetic_events(20_000, n_instruments=5, seed=11)
    c = synthetic_events(20_000, n_instruments=5, seed=12)
    assert a.dtype == EVENT_DTYPE and len(a) == 20_000
    # field by field: the aligned dtype's padding byte carries no data (and no guarantee)
    assert all(np.array_equal(a[f], b[f]) for f in EVENT_DTYPE.names)
    assert not all(np.array_equal(a[f], c[f]) for f in EVENT_DTYPE.names)


def test_clean_stream_gives_a_healthy_uncrossed_book():
    ev = synthetic_events(60_000, n_instruments=8, seed=1, snapshot_every=500)
    book, rep = new_book(8), new_report()
    apply_events(book, ev, rep)
    assert rep[0].sum() == 0, dict(zip(CODE_NAMES, rep[0], strict=True))
    for i in range(8):
        bb, ba = best_prices(book, i)
        assert bb is not None and ba is not None and 1 <= ba - bb <= 10
        assert len(levels(book, i, 0, 10)) >= 3 and len(levels(book, i, 1, 10)) >= 3
    assert not book.stale.any()


def test_event_mix_and_structure():
    ev = synthetic_events(50_000, n_instruments=4, seed=2, snapshot_every=300)
    upd = ev["action"] == ACTION_UPDATE
    assert set(np.unique(ev["action"])) == {ACTION_UPDATE, ACTION_CLEAR, ACTION_TRADE}
    assert 0.1 < np.mean(ev["size"][upd] == 0) < 0.5  # deletes
    assert np.all(np.diff(ev["ts_event"]) >= 0)
    assert np.all(ev["price"][ev["action"] != ACTION_CLEAR] > 0)
    # every clear starts a snapshot whose events carry FLAG_SNAPSHOT
    clears = np.flatnonzero(ev["action"] == ACTION_CLEAR)
    assert len(clears) > 4 + 10
    assert np.all(ev["flags"][clears] & FLAG_SNAPSHOT)
    # per-instrument sequence numbers are contiguous
    for i in range(4):
        seq = ev["seq"][ev["instrument"] == i]
        assert seq[0] == 1 and np.all(np.diff(seq.astype(np.int64)) == 1)
    # activity concentrates near the touch: most updates within 5 ticks of it
    book, rep = new_book(4), new_report()
    near = 0
    for chunk in np.array_split(ev, 50):
        apply_events(book, chunk, rep)
        i = 0
        bb, ba = best_prices(book, i)
        nxt = chunk[(chunk["instrument"] == i) & (chunk["action"] == ACTION_UPDATE)]
        near += np.mean(np.minimum(abs(nxt["price"] - bb), abs(nxt["price"] - ba)) <= 5)
    assert near / 50 > 0.6


def test_last_every_event_and_packets():
    ev = synthetic_events(10_000, n_instruments=3, seed=4, last_every_event=True)
    snap = (ev["flags"] & FLAG_SNAPSHOT) != 0
    assert np.all(ev["flags"][~snap] & FLAG_LAST)
    ev = synthetic_events(10_000, n_instruments=3, seed=4, packet_mean=4.0)
    frac = np.mean((ev["flags"] & FLAG_LAST) != 0)
    assert 0.15 < frac < 0.45
    # a packet never mixes instruments: LAST closes each run of one instrument
    inst = ev["instrument"]
    change = np.flatnonzero(inst[1:] != inst[:-1])
    assert np.all(ev["flags"][change] & FLAG_LAST)


def test_gaps_go_stale_and_recovery_snapshots_heal():
    ev = synthetic_events(40_000, n_instruments=4, seed=5, gap_prob=0.002, snapshot_every=0)
    book, rep = new_book(4), new_report()
    apply_events(book, ev, rep)
    assert rep[0, CODE_SEQ_GAP] > 10
    assert rep[0, CODE_STALE_SKIPPED] > 0
    # every gap is followed by a recovery snapshot, so at most the last ones are still stale
    assert book.stale.sum() <= 4


def test_argument_checks():
    with pytest.raises(ValueError, match="gap_prob"):
        synthetic_events(10, gap_prob=2.0)
    with pytest.raises(ValueError, match="levels"):
        synthetic_events(10, levels=0)


def test_large_stream_is_generated():
    # 1M events must be a matter of seconds (no timing assertion: only that it completes)
    ev = synthetic_events(1_000_000, n_instruments=100, seed=0, last_every_event=True)
    assert len(ev) == 1_000_000 and ev["instrument"].max() == 99
