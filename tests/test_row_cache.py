"""The book's normalised row cache (``top_row``) follows the spec and mode of each call.

Rows come from a per-instrument cache that is maintained only by row calls and rebuilt when a
call brings another normalisation: a book switching between specs and book-only calls must
write exactly the rows of a book that only ever saw one spec.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lobstream.kernels.book import apply_events, new_book, new_report
from lobstream.kernels.dtypes import ROW_META_DTYPE
from lobstream.kernels.features import (
    events_to_rows,
    raw_spec,
    ticks_from_mid_spec,
    zscore_spec,
)
from lobstream.kernels.ring import apply_events_rows, new_ring
from lobstream.testkit.book import RefBook, event_streams
from lobstream.testkit.features import rows as ref_rows

SPECS = [
    zscore_spec(1000.0, 7.5, 3.0, 20.0, levels=3),
    zscore_spec(1001.0, 7.5, 3.0, 20.0, levels=3),  # same kind, other params
    ticks_from_mid_spec(2.0, levels=3),
    raw_spec(levels=3),
]


def flat(book, spec, events):
    out = np.zeros((len(events), 4 * spec.levels), np.float32)
    meta = np.zeros(len(events), ROW_META_DTYPE)
    n = events_to_rows(book, spec, events, out, meta, new_report())
    return out[:n], meta[:n]


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(event_streams(n_instruments=2), event_streams(n_instruments=2, clean=True)),
    st.sampled_from(SPECS),
    st.sampled_from(SPECS),
    st.sampled_from([3, 10]),
)
def test_rows_after_switching_spec_and_mode_are_exact(events, spec_a, spec_b, cached):
    # width 24 re-centres often: the cache is refilled on that path too
    third = len(events) // 3
    a, b, c = events[:third], events[third : 2 * third], events[2 * third :]
    book = new_book(2, 24, levels=cached)
    apply_events_rows(book, new_ring(2, 4, spec_a.levels), spec_a, a, new_report())
    apply_events(book, b[: len(b) // 2], new_report())  # not maintained here
    flat(book, spec_a, b[len(b) // 2 :])
    got, got_meta = flat(book, spec_b, c)

    once = new_book(2, 24, levels=cached)
    all_rows, all_meta = flat(once, spec_b, events)
    keep = all_meta["event_index"] >= 2 * third
    np.testing.assert_array_equal(got.view(np.uint32), all_rows[keep].view(np.uint32))
    np.testing.assert_array_equal(
        got_meta["event_index"] + 2 * third, all_meta["event_index"][keep]
    )


@settings(max_examples=40, deadline=None)
@given(event_streams(n_instruments=2, clean=True), st.integers(0, len(SPECS) - 1))
def test_ring_rows_match_reference_after_a_spec_switch(events, which):
    half = len(events) // 2
    spec, other = SPECS[which], SPECS[(which + 1) % len(SPECS)]
    book, ring = new_book(2, 64, levels=3), new_ring(2, 1, spec.levels)
    apply_events_rows(book, new_ring(2, 1, other.levels), other, events[:half], new_report())
    apply_events_rows(book, ring, spec, events[half:], new_report())
    ref = RefBook(2, 64)
    ref_rows(ref, events[:half], spec.kind, spec.levels, spec.params)
    exp, exp_meta = ref_rows(ref, events[half:], spec.kind, spec.levels, spec.params)
    for i in range(2):
        mine = [k for k, m in enumerate(exp_meta) if m["instrument"] == i]
        if mine:  # the newest row of each instrument sits in its one-row window
            np.testing.assert_allclose(ring.rows[i, 0], exp[mine[-1]], rtol=2e-7, atol=1e-6)
