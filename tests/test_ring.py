"""Mirrored rings: order after many wrap-arounds, gather, warm-up, argument checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lobstream.kernels.book import new_book, new_report
from lobstream.kernels.dtypes import (
    ACTION_UPDATE,
    EVENT_DTYPE,
    FLAG_LAST,
    ROW_META_DTYPE,
    SIDE_ASK,
    SIDE_BID,
)
from lobstream.kernels.features import events_to_rows, raw_spec
from lobstream.kernels.ring import (
    apply_events_rows,
    gather_windows,
    new_ring,
    warmup,
    window_view,
)


def counting_events(n_rows: int, n_instruments: int = 1) -> np.ndarray:
    """A two-sided book per instrument, then ``n_rows`` LAST events per instrument whose bid
    size counts 1, 2, 3, ... so each row says which row it is (raw spec, column 3)."""
    ev = np.zeros(2 * n_instruments + n_rows * n_instruments, EVENT_DTYPE)
    k = 0
    for i in range(n_instruments):
        ev[k] = (k, 0, 0, 101, 1.0, i, SIDE_ASK, ACTION_UPDATE, 0)
        ev[k + 1] = (k + 1, 0, 0, 100, 0.5, i, SIDE_BID, ACTION_UPDATE, 0)
        k += 2
    for r in range(n_rows):
        for i in range(n_instruments):
            ev[k] = (k, 0, 0, 100, float(r + 1), i, SIDE_BID, ACTION_UPDATE, FLAG_LAST)
            k += 1
    return ev


@given(st.integers(1, 7), st.integers(0, 60))
def test_window_is_last_t_rows_oldest_first_after_many_wraps(window, n_rows):
    book, ring = new_book(1, 64, levels=1), new_ring(1, window, levels=1)
    ev = counting_events(n_rows)
    # small batches of every size up to a few laps: the ring state must carry across calls,
    # and the window must be whole after each call (the mirror copy is made at its end)
    start, size = 0, 1
    while start < len(ev):
        apply_events_rows(book, ring, raw_spec(1), ev[start : start + size], new_report())
        start += size
        size = size % (3 * window + 2) + 1
        c = int(ring.count[0])
        assert ring.slot[0] == c % window  # the kernel's division-free slot keeps up
        assert ring.first[0] == -1  # the per-call scratch is reset
        win = window_view(ring, 0)
        assert win.shape == (window, 4)
        expected = [float(r) for r in range(max(1, c - window + 1), c + 1)]
        assert [v for v in win[:, 3] if v != 0] == expected
        # the block is a view into the ring, contiguous, no copy
        assert np.shares_memory(win, ring.rows) and win.flags.c_contiguous
    assert ring.count[0] == n_rows


def test_gather_copies_windows_of_listed_instruments():
    n, t = 5, 4
    book, ring = new_book(n, 64, levels=2), new_ring(n, t, levels=2)
    apply_events_rows(book, ring, raw_spec(2), counting_events(11, n), new_report())
    ids = np.array([3, 0, 3, 4], np.int64)
    out = np.full((6, 1, t, 8), -1.0, np.float32)
    gather_windows(ring, ids, out)
    for b, i in enumerate(ids):
        np.testing.assert_array_equal(out[b, 0], window_view(ring, i))
    assert (out[len(ids) :] == -1).all()  # beyond B untouched
    np.testing.assert_array_equal(out[0, 0, :, 3], [8, 9, 10, 11])


def test_ring_rows_equal_flat_rows():
    book, ring = new_book(2, 64, levels=3), new_ring(2, 10, levels=3)
    ev = counting_events(25, 2)
    apply_events_rows(book, ring, raw_spec(3), ev, new_report())
    rows = np.zeros((len(ev), 12), np.float32)
    meta = np.zeros(len(ev), ROW_META_DTYPE)
    m = events_to_rows(new_book(2, 64, levels=3), raw_spec(3), ev, rows, meta, new_report())
    for i in range(2):
        np.testing.assert_array_equal(
            window_view(ring, i), rows[:m][meta[:m]["instrument"] == i][-10:]
        )


def test_gather_argument_checks():
    ring = new_ring(2, 4, levels=1)
    with pytest.raises(ValueError, match="instrument ids"):
        gather_windows(ring, np.array([2]), np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="shape"):
        gather_windows(ring, np.array([0, 1]), np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="float32"):
        gather_windows(ring, np.array([0]), np.zeros((1, 1, 4, 4), np.float64))


def test_ring_and_book_must_agree():
    with pytest.raises(ValueError, match="same n_instruments"):
        apply_events_rows(new_book(3, 64), new_ring(2, 4, 1), raw_spec(1),
                          counting_events(1), new_report())  # fmt: skip


def test_warmup_compiles_nothing_later():
    warmup()
    from lobstream.kernels._loop import _run
    from lobstream.kernels.ring import _gather

    before = (len(_run.signatures), len(_gather.signatures))
    book, ring = new_book(4), new_ring(4)
    ev = counting_events(3, 4)
    apply_events_rows(book, ring, raw_spec(10), ev, new_report())
    ro = ev.copy()
    ro.flags.writeable = False
    apply_events_rows(book, ring, raw_spec(10), ro, new_report())
    gather_windows(ring, np.arange(4), np.zeros((4, 1, 100, 40), np.float32))
    assert (len(_run.signatures), len(_gather.signatures)) == before
