"""Mid-price labels of a row stream, computed as the rows arrive (bounded lookahead).

:func:`lobstream.kernels.labels.mid_labels` labels a whole stream at once, for every label kind
(``"future"``, ``"smoothed"``, ``"spread"``). A backtest over
a year of data cannot hold the whole stream, so :class:`StreamingLabels` keeps, per instrument,
only what a label still needs: the rows of the past window of the oldest unlabelled row, the
unlabelled ("pending") rows themselves and their payload (the model's probabilities). A row is
finalised once its future window is complete, which is known as soon as the ``k``-th next row of
ITS instrument arrives (horizon in events) or a row later than ``ts + h`` (horizon in ns); rows
still pending when the stream ends have no full horizon (label -1), as in the full-array path.

The arithmetic is the full-array path's, term for term: the same running prefix sum of
``mid - mid[0]`` from the instrument's first row, the same differences and divisions, then
:func:`~lobstream.kernels.labels.classify_change` itself. Labels are therefore equal, not
merely close, to ``mid_labels`` of each instrument's whole stream, for every kind.

Memory per instrument: events, ``2k`` rows; ns, the rows within ``h`` before the oldest pending
row plus those after it (about two horizons of rows).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from lobstream.kernels._jit import njit
from lobstream.kernels.labels import LABEL_KINDS, classify_change

logger = logging.getLogger(__name__)


@njit
def _extend_prefix(last, mid, base, out):
    """``out[j]`` = running sum through row j of ``mid - base``, continuing from ``last``.

    Accumulated one row at a time, as :func:`lobstream.kernels.labels._prefix` does, so that the
    sums are the same floats."""
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
