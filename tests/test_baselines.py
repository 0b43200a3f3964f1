"""Baselines: OFI definition, features stay in their window, the regression learns a signal."""

from __future__ import annotations

import numpy as np
import pytest

from lobstream.models import baselines as B


def _ofi_loop(r):
    e = np.zeros(len(r))
    for n in range(1, len(r)):
        pa, qa, pb, qb = r[n, :4]
        pa0, qa0, pb0, qb0 = r[n - 1, :4]
        e[n] = (
            (qb if pb >= pb0 else 0.0)
            - (qb0 if pb <= pb0 else 0.0)
            - (qa if pa <= pa0 else 0.0)
            + (qa0 if pa >= pa0 else 0.0)
        )
    return e


def _random_rows(rng, m, levels=3):
    rows = np.zeros((m, 4 * levels), dtype=np.float32)
    bid = 1000 + np.cumsum(rng.integers(-1, 2, m))
    ask = bid + rng.integers(1, 3, m)
    for lv in range(levels):
        rows[:, 4 * lv] = ask + lv
        rows[:, 4 * lv + 1] = rng.integers(0, 50, m)
        rows[:, 4 * lv + 2] = bid - lv
        rows[:, 4 * lv + 3] = rng.integers(0, 50, m)
    return rows


def test_ofi_matches_definition():
    rng = np.random.default_rng(1)
    rows = _random_rows(rng, 300)
    np.testing.assert_allclose(B.order_flow_imbalance(rows), _ofi_loop(rows))


def test_features_use_only_their_window():
    rng = np.random.default_rng(2)
    rows = _random_rows(rng, 200)
    T = 20
    ends = np.array([T - 1, 57, 199])
    f1 = B.imbalance_features(rows, ends, 3, T, lookbacks=(1, 5, 50))
    assert f1.shape == (3, 3 + 3)
    # changing everything outside the windows changes nothing
    rows2 = rows.copy()
    mask = np.ones(len(rows), bool)
    for e in ends:
        mask[e - T + 1 : e + 1] = False
    rows2[mask] = _random_rows(rng, int(mask.sum()))
    np.testing.assert_array_equal(f1, B.imbalance_features(rows2, ends, 3, T, (1, 5, 50)))
    e = _ofi_loop(rows)
    assert f1[1, 1] == pytest.approx(e[53:58].sum())
    assert f1[1, 2] == pytest.approx(e[57 - 18 : 58].sum())  # 50 clipped to T - 1 = 19
    with pytest.raises(ValueError, match="window ends"):
        B.imbalance_features(rows, np.array([3]), 3, T)


def test_class_weights_and_majority():
    y = np.array([0, 1, 1, 1, 2, 2])
    w = B.class_weights(y)
    np.testing.assert_allclose(w, [2.0, 2 / 3, 1.0])
    assert B.MajorityClass().fit(y).predict(4).tolist() == [1, 1, 1, 1]


def test_logistic_learns_signal_and_is_deterministic():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1500, 4))
    y = np.where(x[:, 0] > 0.5, 2, np.where(x[:, 0] < -0.5, 0, 1))
    m1 = B.LogisticBaseline().fit(x[:1000], y[:1000])
    acc = (m1.predict(x[1000:]) == y[1000:]).mean()
    assert acc > 0.8
    m2 = B.LogisticBaseline().fit(x[:1000], y[:1000])
    np.testing.assert_array_equal(m1.coef, m2.coef)
    p = m1.predict_proba(x[:5])
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def test_trend_signal_on_a_hand_made_path():
    from lobstream.testkit.labels import trend_signal

    mid = np.array([100.0, 100.5, 101.0, 101.0, 100.0, 99.5, 99.5, 100.0])
    tb = B.TrendBaseline(lookback=3, alpha=1e-3)
    ends = np.array([2, 4, 7])
    s = tb.signal(mid, ends)
    # row 2: 101 vs mean(100, 100.5, 101) = 100.5; row 4: 100 vs 100.667; row 7: 100 vs 99.667
    np.testing.assert_allclose(s, [101 / 100.5 - 1, 100 / (302 / 3) - 1, 100 / (299 / 3) - 1])
    for e, got in zip(ends, s, strict=True):
        assert got == pytest.approx(trend_signal(mid[: e + 1], 3), rel=1e-12)
    assert tb.predict(mid, ends).tolist() == [2, 0, 2]  # momentum
    tb.direction = -1
    assert tb.predict(mid, ends).tolist() == [0, 2, 0]
    assert B.TrendBaseline(3, 0.01).predict(mid, ends).tolist() == [1, 1, 1]  # alpha: flat
    with pytest.raises(ValueError, match="window ends"):
        tb.signal(mid, np.array([1]))


def test_trend_fit_picks_momentum_or_reversal():
    rng = np.random.default_rng(4)
    mid = 1000 + np.cumsum(rng.integers(-1, 2, 2000)) / 2.0
    ends = np.arange(10, 1990)
    tb = B.TrendBaseline(5, 1e-4)
    s = tb.signal(mid, ends)
    momentum = np.where(s > 1e-4, 2, np.where(s < -1e-4, 0, 1))
    fitted = B.TrendBaseline(5, 1e-4).fit(mid, ends, momentum)
    assert fitted.direction == 1 and fitted.rule()["direction"] == "momentum"
    assert fitted.train_f1_macro["momentum"] == pytest.approx(1.0)
    reversal = 2 - momentum
    assert B.TrendBaseline(5, 1e-4).fit(mid, ends, reversal).rule()["direction"] == "reversal"


def test_baseline_reports_include_trend():
    rng = np.random.default_rng(5)
    rows = _random_rows(rng, 600)
    mid = (rows[:, 0].astype(np.float64) + rows[:, 2]) / 2.0
    T = 20
    ends = np.arange(T - 1, 600)
    y = rng.integers(0, 3, ends.size)
    half = ends.size // 2
    out = B.baseline_reports(
        rows,
        3,
        T,
        (ends[:half], y[:half]),
        {"test": (ends[half:], y[half:])},
        mid=mid,
        alpha=1e-4,
        trend_lookback=50,
    )
    assert set(out) == {"majority", "logistic", "trend"}
    assert out["trend"]["rule"]["lookback_rows"] == T  # clipped to the window
    tb = B.TrendBaseline(T, 1e-4, 1 if out["trend"]["rule"]["direction"] == "momentum" else -1)
    pred = tb.predict(mid, ends[half:])
    assert out["trend"]["test"]["accuracy"] == pytest.approx((pred == y[half:]).mean())
    assert "trend" not in B.baseline_reports(rows, 3, T, (ends, y), {"test": (ends, y)})
