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
