"""Mid-price labels of every kind: kernel == slow reference (lobstream.testkit.labels)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lobstream.kernels import labels as L
from lobstream.testkit import labels as ref

RTOL = 1e-12  # float64 sums in a different order; mids are half-ticks


@st.composite
def mids(draw, max_len=60):
    n = draw(st.integers(0, max_len))
    start = draw(st.integers(100, 100_000))
    # half-tick steps, as (best_bid + best_ask) / 2 gives, including long flat stretches
    steps = draw(st.lists(st.sampled_from([-2, -1, 0, 0, 0, 1, 2]), min_size=n, max_size=n))
    mid = (2 * start + np.cumsum(np.asarray(steps, dtype=np.int64))) / 2.0
    return np.maximum(mid, 1.0)


@st.composite
def times(draw, n):
    gaps = draw(st.lists(st.sampled_from([0, 0, 1, 2, 5, 10]), min_size=n, max_size=n))
    return np.cumsum(np.asarray(gaps, dtype=np.int64)) + 1_000


def _labels_agree(got, want, change, alpha):
    # rows whose change sits on the threshold may round either way: excluded
    near = np.isfinite(change) & (np.abs(np.abs(change) - alpha) <= 1e-12 * (1 + alpha))
    np.testing.assert_array_equal(got[~near], want[~near])


@given(mid=mids(), k=st.integers(1, 12), alpha=st.sampled_from([0.0, 1e-5, 1e-4, 1e-3]))
def test_event_horizon_matches_reference(mid, k, alpha):
    got = L.smoothed_change(mid, k)
    want = ref.change_events(mid, k)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-15)
    _labels_agree(L.classify_change(got, alpha), ref.classify(want, alpha), want, alpha)


@given(data=st.data(), h=st.integers(1, 30), alpha=st.sampled_from([0.0, 1e-4]))
def test_time_horizon_matches_reference(data, h, alpha):
    mid = data.draw(mids())
    ts = data.draw(times(len(mid)))
    got = L.smoothed_change(mid, h, ts, "ns")
    want = ref.change_time(mid, ts, h)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-15)
    _labels_agree(L.classify_change(got, alpha), ref.classify(want, alpha), want, alpha)


@given(mid=mids(), k=st.integers(1, 12), alpha=st.sampled_from([0.0, 1e-5, 1e-4, 1e-3]))
def test_future_event_horizon_matches_reference(mid, k, alpha):
    want = ref.future_events(mid, k)
    for kind in ("future", "spread"):  # the same change; only the choice of alpha differs
        got = L.label_change(mid, k, kind=kind)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-15)
        lab = L.mid_labels(mid, k, alpha, kind=kind)
        _labels_agree(lab, ref.classify(want, alpha), want, alpha)


@given(data=st.data(), h=st.integers(1, 30), alpha=st.sampled_from([0.0, 1e-4]))
def test_future_time_horizon_matches_reference(data, h, alpha):
    mid = data.draw(mids())
    ts = data.draw(times(len(mid)))
    got = L.label_change(mid, h, ts, "ns", "future")
    want = ref.future_time(mid, ts, h)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-15)
    _labels_agree(L.classify_change(got, alpha), ref.classify(want, alpha), want, alpha)


def test_smoothed_kind_is_smoothed_change():
    mid = np.array([100.0, 100.0, 101.0, 103.0, 103.0, 99.0, 98.5])
    ts = np.array([0, 3, 3, 9, 12, 20, 31])
    np.testing.assert_array_equal(
        L.label_change(mid, 2, kind="smoothed"), L.smoothed_change(mid, 2)
    )
    np.testing.assert_array_equal(
        L.label_change(mid, 5, ts, "ns", "smoothed"), L.smoothed_change(mid, 5, ts, "ns")
    )


def test_future_known_values_need_no_past():
    mid = np.array([100.0, 100.0, 101.0, 103.0, 103.0, 99.0])
    ch = L.label_change(mid, 2)
    # t=0: next (100, 101) vs 100; t=1: (101, 103) vs 100; the last 2 rows have no future
    assert ch[0] == pytest.approx(100.5 / 100 - 1)
    assert ch[1] == pytest.approx(0.02)
    assert ch[3] == pytest.approx(101 / 103 - 1)
    assert np.isnan(ch[4]) and np.isnan(ch[5])
    # the smoothed label of a steady climb is "up" from the past alone; the future one is not
    climb_then_flat = np.array([100.0, 101.0, 102.0, 103.0, 103.0, 103.0, 103.0])
    assert L.smoothed_labels(climb_then_flat, 3, 1e-3)[3] == L.LABEL_UP
    assert L.mid_labels(climb_then_flat, 3, 1e-3)[3] == L.LABEL_FLAT


def test_spread_alpha_is_the_mean_relative_spread():
    bid = np.array([100, 100, 101, 99])
    ask = np.array([101, 102, 102, 100])
    assert L.spread_alpha(bid, ask) == pytest.approx(ref.spread_alpha(bid, ask), rel=1e-15)
    with pytest.raises(ValueError, match="no rows"):
        L.spread_alpha(bid[:0], ask[:0])
    with pytest.raises(ValueError, match="crossed"):
        L.spread_alpha(np.array([101]), np.array([100]))


def test_known_values_and_edges():
    mid = np.array([100.0, 100.0, 101.0, 103.0, 103.0, 99.0])
    ch = L.smoothed_change(mid, 2)
    # t=1: past (100, 100), next (101, 103): +2%; t=2: (100, 101) vs (103, 103)
    assert np.isnan(ch[0]) and np.isnan(ch[4]) and np.isnan(ch[5])
    assert ch[1] == pytest.approx(0.02)
    assert ch[2] == pytest.approx(103 / 100.5 - 1)
    assert ch[3] == pytest.approx(101 / 102 - 1)
    lab = L.classify_change(ch, 0.015)
    assert lab.tolist() == [-1, 2, 2, 1, -1, -1]
    assert lab.dtype == np.int8


def test_time_horizon_needs_rows_beyond_both_ends():
    mid = np.array([10.0, 11.0, 12.0, 13.0, 14.0])
    ts = np.array([0, 10, 20, 30, 40])
    ch = L.smoothed_change(mid, 10, ts, "ns")
    # row 0: no row at or before -10; rows 3, 4: no row after ts + 10, so the future
    # window might be cut; rows 1, 2 see one row on each side
    assert np.isnan(ch[0]) and np.isnan(ch[3]) and np.isnan(ch[4])
    assert ch[1] == pytest.approx(12 / 11 - 1)
    assert ch[2] == pytest.approx(13 / 12 - 1)


def test_balanced_alpha_uses_given_rows_only():
    rng = np.random.default_rng(0)
    change = rng.normal(0, 1e-4, 3000)
    alpha = L.balanced_alpha(change)
    lab = L.classify_change(change, alpha)
    frac = np.bincount(lab, minlength=3) / lab.size
    assert np.all(np.abs(frac - 1 / 3) < 0.03)
    assert L.balanced_alpha(np.concatenate([change, [np.nan] * 50])) == alpha
    with pytest.raises(ValueError, match="full horizon"):
        L.balanced_alpha(np.array([np.nan]))


def test_bad_input_messages():
    with pytest.raises(ValueError, match="horizon must be positive"):
        L.smoothed_change(np.ones(3), 0)
    with pytest.raises(ValueError, match="needs ts"):
        L.smoothed_change(np.ones(3), 1, unit="ns")
    with pytest.raises(ValueError, match="decreases at row 2"):
        L.smoothed_change(np.ones(3), 1, np.array([0, 5, 4]), "ns")
    with pytest.raises(ValueError, match="positive"):
        L.smoothed_change(np.array([1.0, 0.0]), 1)
    with pytest.raises(ValueError, match="alpha"):
        L.classify_change(np.zeros(2), -1.0)
    with pytest.raises(ValueError, match="label kind must be one of"):
        L.label_change(np.ones(3), 1, kind="mean")
