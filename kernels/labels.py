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

One kernel (``_changes``) holds the formula. :func:`label_change` runs it over a whole stream;
:class:`StreamingLabels` runs it over each instrument's bounded tail as rows arrive (a
backtest over a year of data cannot hold the whole stream), so the labels of both are equal,
not merely close.
"""

from __future__ import annotations

from dataclasses import dataclass

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
def _extend_prefix(last, mid, base, out):
    """``out[j]`` = running sum through row j of ``mid - base``, continuing from ``last``.

    Accumulated one row at a time from the instrument's first row, whatever the chunks, so a
    stream labelled whole and one labelled chunk by chunk sum the same floats."""
    acc = last
    for j in range(mid.shape[0]):
        acc += mid[j] - base
        out[j] = acc


@njit
def _changes(mid, ts, ps, g0, start, base, k, h, unit_ns, smoothed, out):
    """Relative changes of tail rows ``start..`` while their horizon is complete.

    The tail holds rows ``g0..g0+m-1`` of one instrument's stream; ``ps[j]`` is the prefix sum
    of the rows before tail row ``j`` (length m + 1). ``smoothed``: the past mean is the
    reference (kind "smoothed"), else the current mid ("future", "spread"). Returns how many
    rows were decided; ``out[:n]`` gets their changes (NaN: no full horizon or an empty future
    window).
    """
    m = mid.shape[0]
    n = 0
    lo = 0
    hi = start
    for p in range(start, m):
        t = g0 + p
        c = np.nan
        if unit_ns:
            if ts[m - 1] <= ts[p] + h:
                break  # no row after the future window yet: undecided
            while ts[lo] <= ts[p] - h:
                lo += 1
            if hi < p:
                hi = p
            while hi + 1 < m and ts[hi + 1] <= ts[p] + h:
                hi += 1
            if hi != p and not smoothed:
                fut = (ps[hi + 1] - ps[p + 1]) / (hi - p) + base
                c = (fut - mid[p]) / mid[p]
            elif hi != p and g0 + lo != 0:
                past = (ps[p + 1] - ps[lo]) / (p + 1 - lo) + base
                fut = (ps[hi + 1] - ps[p + 1]) / (hi - p) + base
                c = (fut - past) / past
        else:
            if p + k > m - 1:
                break
            if not smoothed:
                fut = (ps[p + 1 + k] - ps[p + 1]) / k + base
                c = (fut - mid[p]) / mid[p]
            elif t - k + 1 >= 0:
                past = (ps[p + 1] - ps[p + 1 - k]) / k + base
                fut = (ps[p + 1 + k] - ps[p + 1]) / k + base
                c = (fut - past) / past
        out[n] = c
        n += 1
    return n


@njit
def _trim_from(ts, ref_ts, h):
    """First tail index with ``ts > ref_ts - h``: no later row's past window reaches before."""
    j = 0
    while j < ts.shape[0] and ts[j] <= ref_ts - h:
        j += 1
    return j


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
    if unit == "events":
        ts = np.empty(0, dtype=np.int64)  # not read by an event horizon
    elif unit == "ns":
        if ts is None:
            raise ValueError("a time horizon (unit='ns') needs ts, the rows' ts_event")
        ts = np.ascontiguousarray(ts, dtype=np.int64)
        if ts.shape != mid.shape:
            raise ValueError(f"ts has shape {ts.shape}, expected {mid.shape} like mid")
        if ts.size > 1 and np.any(np.diff(ts) < 0):
            row = int(np.argmax(np.diff(ts) < 0)) + 1
            raise ValueError(f"ts decreases at row {row}: rows must be in time order")
    else:
        raise ValueError(f"unit must be 'events' or 'ns', got {unit!r}")
    # the whole stream is one tail of the streaming kernel: the rows it cannot decide are
    # those without a full horizon
    m = mid.shape[0]
    base = float(mid[0]) if m else 0.0
    ps = np.zeros(m + 1, dtype=np.float64)
    _extend_prefix(0.0, mid, base, ps[1:])
    out = np.full(m, np.nan, dtype=np.float64)
    h = int(horizon)
    _changes(mid, ts, ps, 0, 0, base, h, h, unit == "ns", kind == "smoothed", out)
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


@dataclass
class _Tail:
    mid: np.ndarray  # (m,) f8 rows g0 .. g0 + m - 1
    ts: np.ndarray  # (m,) i8
    ps: np.ndarray  # (m + 1,) f8 prefix sums before each row, and after the last
    payload: np.ndarray  # (m - pend, w) f4 payload of the pending rows
    g0: int  # index in the instrument's stream of the first tail row
    pend: int  # tail index of the first pending row
    base: float  # mid of the instrument's first row


class StreamingLabels:
    """Per-instrument lookahead buffers: rows in, finalised (payload, label) out.

    Per instrument only what a label still needs is kept: the rows of the past window of the
    oldest unlabelled row, the unlabelled ("pending") rows and their payload (e.g. the model's
    probabilities). A row is finalised once the ``k``-th next row of ITS instrument arrives
    (horizon in events) or a row later than ``ts + h`` (horizon in ns); rows still pending when
    the stream ends have no full horizon (label -1), as in :func:`mid_labels`. Memory per
    instrument: events, ``2k`` rows; ns, about two horizons of rows.

    Parameters
    ----------
    horizon : ``k`` rows (``unit="events"``) or ``h`` ns (``unit="ns"``), positive.
    unit : ``"events"`` or ``"ns"``.
    alpha : threshold of the flat class (see :mod:`lobstream.kernels.labels`).
    width : payload columns carried with each row until it is finalised.
    kind : label kind, ``"future"``, ``"smoothed"`` or ``"spread"`` (the change of "future";
        its alpha was chosen from the spread at training and is given here).
    """

    def __init__(
        self, horizon: int, unit: str, alpha: float, width: int = 3, kind: str = "future"
    ) -> None:
        if kind not in LABEL_KINDS:
            raise ValueError(f"label kind must be one of {LABEL_KINDS}, got {kind!r}")
        if unit not in ("events", "ns"):
            raise ValueError(f"unit must be 'events' or 'ns', got {unit!r}")
        if horizon <= 0:
            raise ValueError(f"horizon must be positive, got {horizon}")
        if not (alpha >= 0 and np.isfinite(alpha)):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
        self.horizon = int(horizon)
        self.unit_ns = unit == "ns"
        self.alpha = float(alpha)
        self.width = int(width)
        self.kind = kind
        self._tails: dict[int, _Tail] = {}
        self.n_pending_max = 0  # largest pending buffer seen (rows), for reports and tests

    @property
    def n_pending(self) -> int:
        """Rows waiting for their label now, all instruments."""
        return sum(len(t.payload) for t in self._tails.values())

    def add(
        self, instrument: np.ndarray, mid: np.ndarray, ts: np.ndarray, payload: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Take a chunk of rows (any instruments, arrival order); return the rows finalised.

        Parameters
        ----------
        instrument : (m,) integer instrument id of each row.
        mid : (m,) float64 mid in ticks. ts : (m,) int64 ts_event, non-decreasing per instrument.
        payload : (m, width) float32 carried to the output. None of the inputs is modified.

        Returns
        -------
        (payload (r, width) float32, labels (r,) int8) of the rows whose label became known,
        grouped by instrument (new arrays).
        """
        outs_p, outs_l = [], []
        inst = np.asarray(instrument).astype(np.int64, copy=False)
        ids = np.unique(inst)
        for i in ids.tolist():
            idx = None if len(ids) == 1 else np.flatnonzero(inst == i)
            sel = slice(None) if idx is None else idx
            p, lab = self._add_one(
                i,
                np.ascontiguousarray(mid[sel], np.float64),
                np.ascontiguousarray(ts[sel], np.int64),
                np.asarray(payload[sel], np.float32),
            )
            outs_p.append(p)
            outs_l.append(lab)
        self.n_pending_max = max(self.n_pending_max, self.n_pending)
        return _cat(outs_p, outs_l, self.width)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """End of the stream: every pending row gets label -1 (no full horizon); buffers freed."""
        outs_p = [t.payload for t in self._tails.values()]
        outs_l = [np.full(len(p), -1, np.int8) for p in outs_p]
        self._tails.clear()
        return _cat(outs_p, outs_l, self.width)

    def _add_one(self, i: int, mid: np.ndarray, ts: np.ndarray, payload: np.ndarray):
        if not (np.all(np.isfinite(mid)) and mid.min() > 0):
            raise ValueError(
                f"instrument {i}: mid prices must be finite and positive (ticks), found "
                f"{mid[~(np.isfinite(mid) & (mid > 0))][0]!r}; check the rows' meta"
            )
        tail = self._tails.get(i)
        if tail is None:
            tail = _Tail(
                mid[:0],
                ts[:0],
                np.zeros(1),
                np.empty((0, self.width), np.float32),
                0,
                0,
                float(mid[0]),
            )
            self._tails[i] = tail
        prev_ts = tail.ts[-1:] if len(tail.ts) else ts[:0]
        steps = np.diff(np.concatenate((prev_ts, ts)))
        if steps.size and steps.min() < 0:
            bad = int(np.argmax(steps < 0))
            raise ValueError(
                f"instrument {i}: ts_event goes backwards ({steps[bad]} ns) at its row "
                f"{tail.g0 + len(tail.ts) - len(prev_ts) + bad + 1}; labels need each "
                "instrument's rows in time order"
            )
        ps_new = np.empty(len(mid), np.float64)
        _extend_prefix(float(tail.ps[-1]), mid, tail.base, ps_new)
        tail.mid = np.concatenate((tail.mid, mid))
        tail.ts = np.concatenate((tail.ts, ts))
        tail.ps = np.concatenate((tail.ps, ps_new))
        tail.payload = np.concatenate((tail.payload, payload))
        change = np.empty(len(tail.mid) - tail.pend, np.float64)
        n = _changes(
            tail.mid,
            tail.ts,
            tail.ps,
            tail.g0,
            tail.pend,
            tail.base,
            self.horizon,
            self.horizon,
            self.unit_ns,
            self.kind == "smoothed",
            change,
        )
        done_p = tail.payload[:n]
        labels = classify_change(change[:n], self.alpha)
        tail.payload = tail.payload[n:]
        tail.pend += n
        self._trim(tail)
        return done_p, labels

    def _trim(self, tail: _Tail) -> None:
        # keep what the oldest pending row (or, with none pending, the next row) still needs
        m = len(tail.mid)
        if self.unit_ns:
            ref = tail.ts[tail.pend] if tail.pend < m else tail.ts[m - 1]
            d = int(_trim_from(tail.ts, ref, self.horizon))
        else:
            d = max(0, tail.pend + 1 - self.horizon)
        d = min(d, tail.pend)
        if d == 0:
            return
        # copies, so the dropped rows' memory goes back (a view would keep the whole array)
        tail.mid = tail.mid[d:].copy()
        tail.ts = tail.ts[d:].copy()
        tail.ps = tail.ps[d:].copy()
        tail.payload = tail.payload.copy()
        tail.g0 += d
        tail.pend -= d


def _cat(ps: list[np.ndarray], ls: list[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    if not ps:
        return np.empty((0, width), np.float32), np.empty(0, np.int8)
    return np.concatenate(ps), np.concatenate(ls)
