"""The scheduler: which instruments are due, round-robin selection of at most max_batch,
conflation counts and stale instruments."""

from __future__ import annotations

import numpy as np

from lobstream.engine.scheduler import Scheduler


def test_select_from_a_scan_equals_select_that_scans():
    """The daemon scans the due windows once a round and selects from that scan."""
    rng = np.random.default_rng(0)
    a, b = Scheduler(40, 5, 8), Scheduler(40, 5, 8)
    count = np.zeros(40, np.int64)
    for _ in range(50):
        count += rng.integers(0, 3, 40)
        stale = (rng.random(40) < 0.1).astype(np.uint8)
        due = b.due(count, stale)
        ia, ca = a.select(count, stale)
        ib, cb = b.select(count, stale, due=due)
        assert np.array_equal(ia, ib) and ca == cb
        assert np.array_equal(a.last, b.last)


def test_due_needs_a_full_window_and_new_rows():
    s = Scheduler(3, 4, 8)
    count = np.array([3, 4, 9], np.int64)
    stale = np.zeros(3, np.uint8)
    assert s.due(count, stale).tolist() == [1, 2]  # instrument 0 has 3 rows of a 4-row window
    s.select(count, stale)
    assert s.due(count, stale).tolist() == []  # inferred at these counts: nothing new
    count[2] += 1
    assert s.due(count, stale).tolist() == [2]


def test_round_robin_serves_every_due_instrument_before_any_twice():
    """More due than max_batch: the next selection starts after the last one taken, so low
    ids that are always due cannot starve the others."""
    s = Scheduler(10, 1, 3)
    stale = np.zeros(10, np.uint8)
    count = np.zeros(10, np.int64)
    taken = []
    for _ in range(10):
        count += 1  # every instrument gains a row every round: all ten are always due
        ids, _ = s.select(count, stale)
        assert len(ids) == 3
        taken += ids.tolist()
    # each window of 10 consecutive selections covers all ten instruments once
    for k in range(0, len(taken) - 9):
        assert sorted(taken[k : k + 10]) == list(range(10))


def test_conflated_counts_rows_never_inferred_on_their_own_window():
    s = Scheduler(2, 2, 8)
    stale = np.zeros(2, np.uint8)
    count = np.array([2, 5], np.int64)  # 0: first full window; 1: rows 2..5, windows at 2,3,4,5
    ids, conflated = s.select(count, stale)
    assert ids.tolist() == [0, 1] and conflated == 3  # instrument 1's windows at 2, 3, 4
    count += np.array([1, 4])
    ids, conflated = s.select(count, stale)
    assert ids.tolist() == [0, 1] and conflated == 3  # 1 newest each; 0 + 3 skipped
    ids, conflated = s.select(count, stale)
    assert len(ids) == 0 and conflated == 0


def test_stale_instruments_are_never_selected_and_forget_their_pending_rows():
    s = Scheduler(3, 1, 8)
    count = np.array([5, 5, 5], np.int64)
    stale = np.array([0, 1, 0], np.uint8)
    ids, _ = s.select(count, stale)
    assert ids.tolist() == [0, 2]
    count[1] = 8  # rows written while stale predate the fault
    s.forget_stale(count, stale)
    stale[1] = 0  # healed by a snapshot
    ids, conflated = s.select(count, stale)
    assert len(ids) == 0 and conflated == 0  # nothing new since the heal
    count[1] += 1
    ids, conflated = s.select(count, stale)
    assert ids.tolist() == [1] and conflated == 0  # its first window after the heal only


def test_min_batch_and_max_batch():
    count = np.ones(6, np.int64)
    stale = np.zeros(6, np.uint8)
    s = Scheduler(6, 1, 8)
    ids, _ = s.select(count, stale, min_batch=7)  # fewer due than asked: none taken
    assert len(ids) == 0 and s.last.tolist() == [0] * 6
    s = Scheduler(6, 1, 4)
    ids, _ = s.select(count, stale, min_batch=7)  # a batch can never exceed max_batch
    assert ids.tolist() == [0, 1, 2, 3]
