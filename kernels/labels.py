"""Mid-price labels: the leak-free future label (default), the smoothed label of the
literature (DeepLOB / FI-2010 / LOBCAST) and a TLOB-style spread threshold.

Convention, for the feature row ``t`` of one instrument's stream (rows in time order):

- ``m_plus(t)``: mean of the mids of the *next* window, strictly after row ``t``: rows
  ``t+1 .. t+k`` (horizon ``k`` in events), or every row ``j > t`` with ``ts[j] <= ts[t] + h``
  (horizon ``h`` in nanoseconds).
- ``m_minus(t)``: mean of the mids of the *previous* window, which ends at and includes row
  ``t`` (the book the model sees last): rows ``t-k+1 .. t``, or every row ``j <= t`` with
  ``ts[j] > ts[t] - h``.

Label kinds (``LABEL_KINDS``), each a relative change ``change(t)``:

- ``"future"``: ``(m_plus - mid[t]) / mid[t]``. Depends on the past only through the current
  mid, so nothing of it can be read off the window's own mid path: leak-free.
- ``"smoothed"``: ``(m_plus - m_minus) / m_minus``. ``m_minus`` lies inside the model's window,
  so a model (or the trend baseline) that sees the mid path scores on it without predicting
  anything. Kept for comparison with the literature, and the kind of manifests without one.
- ``"spread"``: the change of ``"future"``; only the threshold differs: alpha is the mean
  relative spread ``(best_ask - best_bid) / mid`` of the training rows (:func:`spread_alpha`),
  so "up" and "down" mean moves of the mean future mid larger than about one typical spread
  (Berti & Kasneci 2025, TLOB, choose the threshold from the average spread).

The label is down (0) if ``change < -alpha``, up (2) if ``change > alpha``, else flat (1).

A row without a full horizon gets label -1 (excluded from training and scoring). In events:
fewer than ``k`` rows after ``t`` (and, for ``"smoothed"``, fewer than ``k`` rows before it,
``t`` included). In time: no row after ``ts[t] + h`` (the future window may be cut by the end
of the stream) or an empty future window; for ``"smoothed"`` also no row at or before
``ts[t] - h`` (the past window may be cut by the start of the stream).

Mids are in ticks (``ROW_META_DTYPE['mid']``); the relative change does not depend on the
tick size. Sums are taken over ``mid - mid[0]`` so that half-tick mids add up exactly.
"""

from __future__ import annotations

import numpy as np

from lobstream.kernels._jit import njit

LABEL_DOWN = 0
LABEL_FLAT = 1
LABEL_UP = 2
LABEL_NONE = -1  # no full horizon: excluded
LABEL_KINDS = ("future", "smoothed", "spread")
# what each kind means, in words, for manifests and reports
LABEL_DEFINITIONS = {
    "future": "mean of next k mids vs current mid, relative to current mid (leak-free)",
    "smoothed": "mean of next k mids vs mean of previous k mids (incl. current), relative to past",
    "spread": "mean of next k mids vs current mid, relative to current mid; alpha = mean "
    "relative spread (ask - bid) / mid of the training rows",
}


@njit
def _prefix(mid):
    m = mid.shape[0]
    out = np.zeros(m + 1, dtype=np.float64)
    acc = 0.0
    for i in range(m):
        acc += mid[i] - mid[0]
        out[i + 1] = acc
    return out


@njit
def _change_events(mid, k, out):
    m = mid.shape[0]
    ps = _prefix(mid)
    base = mid[0] if m > 0 else 0.0
    for t in range(m):
        out[t] = np.nan
        if t - k + 1 < 0 or t + k > m - 1:
            continue
        past = (ps[t + 1] - ps[t + 1 - k]) / k + base
        fut = (ps[t + 1 + k] - ps[t + 1]) / k + base
        out[t] = (fut - past) / past


@njit
def _future_events(mid, k, out):
    m = mid.shape[0]
    ps = _prefix(mid)
    base = mid[0] if m > 0 else 0.0
    for t in range(m):
        out[t] = np.nan
        if t + k > m - 1:
            continue
        fut = (ps[t + 1 + k] - ps[t + 1]) / k + base
        out[t] = (fut - mid[t]) / mid[t]


@njit
def _future_time(mid, ts, h, out):
    m = mid.shape[0]
    ps = _prefix(mid)
    base = mid[0] if m > 0 else 0.0
    hi = 0  # last row with ts <= ts[t] + h
    for t in range(m):
        out[t] = np.nan
        if hi < t:
            hi = t
        while hi + 1 < m and ts[hi + 1] <= ts[t] + h:
            hi += 1
        if hi >= m - 1 or hi == t:
            continue  # cut by the end of the stream, or an empty future window
        fut = (ps[hi + 1] - ps[t + 1]) / (hi - t) + base
        out[t] = (fut - mid[t]) / mid[t]


@njit
def _change_time(mid, ts, h, out):
    m = mid.shape[0]
    ps = _prefix(mid)
    base = mid[0] if m > 0 else 0.0
    lo = 0  # first row with ts > ts[t] - h
    hi = 0  # last row with ts <= ts[t] + h
    n_empty = 0
    for t in range(m):
        out[t] = np.nan
        while ts[lo] <= ts[t] - h:
            lo += 1
        if hi < t:
            hi = t
        while hi + 1 < m and ts[hi + 1] <= ts[t] + h:
            hi += 1
        if lo == 0 or hi >= m - 1:
            continue  # a window may be cut by the start or the end of the stream
        if hi == t:
            n_empty += 1
            continue
        past = (ps[t + 1] - ps[lo]) / (t + 1 - lo) + base
        fut = (ps[hi + 1] - ps[t + 1]) / (hi - t) + base
        out[t] = (fut - past) / past
    return n_empty


@njit
def _classify(change, alpha, out):
    for t in range(change.shape[0]):
        c = change[t]
        if np.isnan(c):
            out[t] = -1
        elif c > alpha:
            out[t] = 2
        elif c < -alpha:
            out[t] = 0
        else:
            out[t] = 1


def label_change(
    mid: np.ndarray,
    horizon: int,
    ts: np.ndarray | None = None,
    unit: str = "events",
    kind: str = "future",
) -> np.ndarray:
    """Relative change of the mid over ``horizon``, per row, for a label ``kind``.

    Parameters
    ----------
    mid : ndarray (M,) float64
        Mid prices in ticks of one instrument's stream, in time order. Not modified.
    horizon : int
        ``k`` rows (``unit="events"``) or ``h`` nanoseconds (``unit="ns"``); positive.
    ts : ndarray (M,) int64, optional
        ``ts_event`` of each row, non-decreasing; required when ``unit="ns"``.
    unit : {"events", "ns"}
    kind : {"future", "smoothed", "spread"}
        See the module docstring; ``"spread"`` has the change of ``"future"``.

    Returns
    -------
    ndarray (M,) float64
        ``change(t)``; NaN where the row has no full horizon.
    """
    if kind not in LABEL_KINDS:
        raise ValueError(f"label kind must be one of {LABEL_KINDS}, got {kind!r}")
    mid = np.ascontiguousarray(mid, dtype=np.float64)
    if mid.ndim != 1:
        raise ValueError(f"mid must be 1-D, got shape {mid.shape}")
    if horizon <= 0:
        raise ValueError(f"horizon must be positive, got {horizon}")
    if mid.size and not (np.all(np.isfinite(mid)) and mid.min() > 0):
        raise ValueError("mid prices must be finite and positive (ticks); check the rows' meta")
    out = np.empty(mid.shape[0], dtype=np.float64)
    smoothed = kind == "smoothed"
    if unit == "events":
        (_change_events if smoothed else _future_events)(mid, int(horizon), out)
    elif unit == "ns":
        if ts is None:
            raise ValueError("a time horizon (unit='ns') needs ts, the rows' ts_event")
        ts = np.ascontiguousarray(ts, dtype=np.int64)
        if ts.shape != mid.shape:
            raise ValueError(f"ts has shape {ts.shape}, expected {mid.shape} like mid")
        if ts.size > 1 and np.any(np.diff(ts) < 0):
            row = int(np.argmax(np.diff(ts) < 0)) + 1
            raise ValueError(f"ts decreases at row {row}: rows must be in time order")
        if mid.size:
            (_change_time if smoothed else _future_time)(mid, ts, int(horizon), out)
    else:
        raise ValueError(f"unit must be 'events' or 'ns', got {unit!r}")
    return out


def smoothed_change(
    mid: np.ndarray, horizon: int, ts: np.ndarray | None = None, unit: str = "events"
) -> np.ndarray:
    """:func:`label_change` of kind ``"smoothed"``: ``(m_plus - m_minus) / m_minus``, (M,) f8."""
    return label_change(mid, horizon, ts, unit, "smoothed")


def classify_change(change: np.ndarray, alpha: float) -> np.ndarray:
    """Labels from relative changes: 0 down (< -alpha), 1 flat, 2 up (> alpha), -1 for NaN.

    Parameters
    ----------
    change : ndarray (M,) float64
        From :func:`label_change`. Not modified.
    alpha : float
        Non-negative threshold on the relative change.

    Returns
    -------
    ndarray (M,) int8
    """
    if not (alpha >= 0 and np.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
    change = np.ascontiguousarray(change, dtype=np.float64)
    out = np.empty(change.shape[0], dtype=np.int8)
    _classify(change, float(alpha), out)
    return out


def balanced_alpha(change: np.ndarray) -> float:
    """Threshold that makes the three classes as even as the data allow.

    The flat class is ``|change| <= alpha``, so alpha is the 1/3 quantile of ``|change|``
    over the rows given (pass the *training* rows only); up and down then share the rest
    as the market's drift allows. Where more than a third of changes are exactly 0, alpha is
    0 and flat holds all of them.

    Parameters
    ----------
    change : ndarray (M,) float64
        Relative changes; NaN entries (no full horizon) are ignored. Not modified.
    """
    a = np.abs(change[np.isfinite(change)])
    if a.size == 0:
        raise ValueError(
            "no row has a full horizon: cannot choose alpha (more rows or a shorter horizon needed)"
        )
    return float(np.quantile(a, 1.0 / 3.0, method="lower"))


def spread_alpha(best_bid: np.ndarray, best_ask: np.ndarray) -> float:
    """Threshold of the ``"spread"`` label: mean relative spread ``(ask - bid) / mid``.

    Parameters
    ----------
    best_bid, best_ask : ndarray (M,) int64
        The touch in ticks of the rows given (pass the *training* rows only). Not modified.
    """
    bid = np.asarray(best_bid, dtype=np.float64)
    ask = np.asarray(best_ask, dtype=np.float64)
    if bid.size == 0:
        raise ValueError("no rows: cannot choose alpha from the spread")
    mid = (bid + ask) / 2.0
    if not (np.all(np.isfinite(mid)) and mid.min() > 0 and np.all(ask >= bid)):
        raise ValueError("the touch must be finite, positive and not crossed to take a spread")
    return float(np.mean((ask - bid) / mid))


def mid_labels(
    mid: np.ndarray,
    horizon: int,
    alpha: float,
    ts: np.ndarray | None = None,
    unit: str = "events",
    kind: str = "future",
) -> np.ndarray:
    """Labels (M,) int8 in {-1, 0, 1, 2} of one stream: :func:`label_change` then
    :func:`classify_change`."""
    return classify_change(label_change(mid, horizon, ts, unit, kind), alpha)


def smoothed_labels(
    mid: np.ndarray,
    horizon: int,
    alpha: float,
    ts: np.ndarray | None = None,
    unit: str = "events",
) -> np.ndarray:
    """Labels (M,) int8 in {-1, 0, 1, 2} of one stream: :func:`smoothed_change` then
    :func:`classify_change`."""
    return classify_change(smoothed_change(mid, horizon, ts, unit), alpha)


def warm_up() -> None:
    """Compile (or load from cache) every kernel of this module on a tiny input."""
    mid = np.array([10.0, 10.5, 11.0, 10.5], dtype=np.float64)
    ts = np.arange(4, dtype=np.int64)
    c = smoothed_change(mid, 1)
    smoothed_change(mid, 1, ts, "ns")
    label_change(mid, 1)
    label_change(mid, 1, ts, "ns")
    classify_change(c, 0.0)
