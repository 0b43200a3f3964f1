"""Baselines that need no deep learning: the majority class, a logistic regression on
order-flow and level imbalances, and a trend rule on the window's own mid path. A deep model is
worth shipping only where it beats all three on the same split and the same metrics.

Features are computed from RAW feature rows (``FEATURE_RAW``: prices in ticks, sizes as they
are; column order ask px 1, ask sz 1, bid px 1, bid sz 1, ask px 2, ...) at the last row ``t``
of each window, using only rows of that window, so they see exactly what a deep model sees:

- order-flow imbalance (Cont, Kukanov and Stoikov 2014) at the touch, summed over the last
  ``w`` row transitions for each ``w`` in ``lookbacks`` (all ``< T``, so row ``t - w`` is still
  in the window)::

      e_n = 1[pb_n >= pb_{n-1}] qb_n - 1[pb_n <= pb_{n-1}] qb_{n-1}
          - 1[pa_n <= pa_{n-1}] qa_n + 1[pa_n >= pa_{n-1}] qa_{n-1}

- level imbalances at row ``t``: ``(bid size - ask size) / (bid size + ask size)`` for each of
  the ``L`` levels (0 where both are 0).

The logistic regression is multinomial (3 classes), L2-penalised, class-weighted (inverse class
frequency of the training labels), on features standardised with training statistics, fitted
by full-batch L-BFGS in float64 (torch), deterministic.

The trend baseline (:class:`TrendBaseline`) sees only the mids of the window's last ``k`` rows
(row meta ``mid``): ``s = (mid_t - mean(mid_{t-k+1..t})) / mean(mid_{t-k+1..t})``, classified
with the label's own alpha as a label is (down ``s < -alpha``, up ``s > alpha``). Whether
momentum (``+s``) or reversal (``-s``) is used is fitted on the training windows (the better
macro-F1). It predicts nothing about the book: against the smoothed label, whose past mean is
inside the window, it measures how much of a score the label itself gives away.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lobstream.kernels.labels import classify_change

logger = logging.getLogger(__name__)

N_CLASSES = 3


def order_flow_imbalance(raw_rows: np.ndarray) -> np.ndarray:
    """Per-row OFI contribution ``e_n`` at the touch (``e_0 = 0``).

    Parameters
    ----------
    raw_rows : ndarray (M, F) float32 or float64
        RAW feature rows of consecutive book states. Not modified. Rows of different streams
        may be concatenated: ``e`` at a stream's first row is meaningless, and
        :func:`imbalance_features` never uses it (lookbacks stay inside a window).

    Returns
    -------
    ndarray (M,) float64
    """
    r = np.asarray(raw_rows, dtype=np.float64)
    pa, qa, pb, qb = r[:, 0], r[:, 1], r[:, 2], r[:, 3]
    e = np.zeros(r.shape[0], dtype=np.float64)
    e[1:] = (
        (pb[1:] >= pb[:-1]) * qb[1:]
        - (pb[1:] <= pb[:-1]) * qb[:-1]
        - (pa[1:] <= pa[:-1]) * qa[1:]
        + (pa[1:] >= pa[:-1]) * qa[:-1]
    )
    return e


def imbalance_features(
    raw_rows: np.ndarray,
    ends: np.ndarray,
    levels: int,
    window: int,
    lookbacks: Sequence[int] = (1, 10, 50, 99),
    ofi: np.ndarray | None = None,
) -> np.ndarray:
    """OFI sums and level imbalances at the last row of each window.

    Parameters
    ----------
    raw_rows : ndarray (M, F) float32
        RAW rows, F = 4 * levels or more. Not modified.
    ends : ndarray (N,) int64
        Index of each window's last row; each window is rows ``end - window + 1 .. end``.
    levels : int
        Book levels L used for the imbalances.
    window : int
        T; lookbacks of ``window`` or more are clipped to ``window - 1``.
    lookbacks : sequence of int
        OFI sums over the last ``w`` transitions.
    ofi : ndarray (M,) float64, optional
        From :func:`order_flow_imbalance` (computed here when absent).

    Returns
    -------
    ndarray (N, len(lookbacks) + levels) float64
    """
    if raw_rows.ndim != 2 or raw_rows.shape[1] < 4 * levels:
        raise ValueError(f"raw_rows has shape {raw_rows.shape}, expected (M, >= {4 * levels})")
    ends = np.asarray(ends, dtype=np.int64)
    if ends.size and (ends.min() < window - 1 or ends.max() >= raw_rows.shape[0]):
        raise ValueError(
            f"window ends must lie in [{window - 1}, {raw_rows.shape[0] - 1}], got "
            f"[{ends.min()}, {ends.max()}]"
        )
    e = order_flow_imbalance(raw_rows) if ofi is None else ofi
    csum = np.concatenate([[0.0], np.cumsum(e)])  # csum[i] = sum(e[:i])
    cols = []
    for w in lookbacks:
        w = min(int(w), window - 1)
        cols.append(csum[ends + 1] - csum[ends + 1 - w] if w > 0 else np.zeros(ends.size))
    last = np.asarray(raw_rows[ends], dtype=np.float64)
    ask = last[:, 1 : 4 * levels : 4]
    bid = last[:, 3 : 4 * levels : 4]
    tot = bid + ask
    imb = np.divide(bid - ask, tot, out=np.zeros_like(tot), where=tot > 0)
    return np.column_stack([*cols, imb]) if cols else imb


def class_weights(labels: np.ndarray) -> np.ndarray:
    """Inverse-frequency weights (3,) float64, mean 1 over the samples; absent classes get 0."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=N_CLASSES).astype(float)
    w = np.divide(counts.sum() / N_CLASSES, counts, out=np.zeros(N_CLASSES), where=counts > 0)
    return w


@dataclass
class MajorityClass:
    """Predicts the most frequent training class for every sample."""

    label: int = 1

    def fit(self, labels: np.ndarray) -> MajorityClass:
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=N_CLASSES)
        self.label = int(np.argmax(counts))
        return self

    def predict(self, n: int) -> np.ndarray:
        """(n,) int64 of the majority label."""
        return np.full(n, self.label, dtype=np.int64)


@dataclass
class LogisticBaseline:
    """Multinomial logistic regression with L2 penalty and class weights.

    ``l2`` multiplies ``0.5 * ||W||^2`` (not the bias) added to the weighted mean
    cross-entropy.
    """

    l2: float = 1e-3
    max_iter: int = 200
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    std: np.ndarray = field(default_factory=lambda: np.ones(0))
    coef: np.ndarray = field(default_factory=lambda: np.zeros((0, N_CLASSES)))
    bias: np.ndarray = field(default_factory=lambda: np.zeros(N_CLASSES))

    def fit(self, x: np.ndarray, y: np.ndarray) -> LogisticBaseline:
        """Fit on features ``x`` (N, D) float64 and labels ``y`` (N,) in {0, 1, 2}."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.int64)
        if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"need x (N, D) and y (N,) with N > 0, got {x.shape}, {y.shape}")
        self.mean = x.mean(axis=0)
        self.std = np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
        xt = torch.from_numpy((x - self.mean) / self.std)
        yt = torch.from_numpy(y)
        wt = torch.from_numpy(class_weights(y))
        coef = torch.zeros(x.shape[1], N_CLASSES, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(N_CLASSES, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS(
            [coef, bias],
            max_iter=self.max_iter,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
        )
        loss_fn = torch.nn.CrossEntropyLoss(weight=wt)

        def closure():
            opt.zero_grad()
            loss = loss_fn(xt @ coef + bias, yt) + 0.5 * self.l2 * (coef * coef).sum()
            loss.backward()
            return loss

        # a few thousand x ~15 float64: one thread is fastest, and threads idling in spin-waits
        # on a busy machine cost seconds per step
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            opt.step(closure)
        finally:
            torch.set_num_threads(threads)
        self.coef = coef.detach().numpy().copy()
        self.bias = bias.detach().numpy().copy()
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 3) float64 for features ``x`` (N, D)."""
        z = ((np.asarray(x, dtype=np.float64) - self.mean) / self.std) @ self.coef + self.bias
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted classes (N,) int64."""
        return np.argmax(self.predict_proba(x), axis=1)


@dataclass
class TrendBaseline:
    """Sign of the mid against its mean over the window's last ``lookback`` rows.

    ``direction`` +1 (momentum: up when the mid is above its recent mean) or -1 (reversal).
    """

    lookback: int
    alpha: float
    direction: int = 1
    train_f1_macro: dict = field(default_factory=dict)  # direction name -> training macro-F1

    def signal(self, mid: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """``s`` (N,) float64 at each window end (module docstring).

        Parameters
        ----------
        mid : ndarray (M,) float64
            Mids in ticks of the flat rows (row meta ``mid``). Not modified.
        ends : ndarray (N,) int64
            Last row of each window; rows ``end - lookback + 1 .. end`` must be in the window.
        """
        k = int(self.lookback)
        mid = np.asarray(mid, dtype=np.float64)
        ends = np.asarray(ends, dtype=np.int64)
        if ends.size and (ends.min() < k - 1 or ends.max() >= mid.shape[0]):
            raise ValueError(
                f"window ends must lie in [{k - 1}, {mid.shape[0] - 1}] for a lookback of {k}"
            )
        # k passes over the ends, in a fixed order: mids are half-ticks, so each window's sum
        # is exact and the signal is the same float whichever rows around it are at hand
        # (the streaming backtest computes it from a carry of k - 1 rows; no long cumsum)
        acc = np.zeros(ends.shape[0], dtype=np.float64)
        for j in range(k):
            acc += mid[ends - j]
        mean = acc / k
        return (mid[ends] - mean) / mean

    def predict_rows(self, mid: np.ndarray) -> np.ndarray:
        """Prediction (m,) int8 at every row of one instrument's mids; -1 where fewer than
        ``lookback`` rows are at hand (row ``j < lookback - 1``)."""
        mid = np.asarray(mid, dtype=np.float64)
        out = np.full(mid.shape[0], -1, np.int8)
        k = int(self.lookback)
        if mid.shape[0] >= k:
            out[k - 1 :] = self.predict(mid, np.arange(k - 1, mid.shape[0]))
        return out

    def predict(self, mid: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Predicted classes (N,) int64: :func:`classify_change` of ``direction * s``."""
        s = self.direction * self.signal(mid, ends)
        return classify_change(s, self.alpha).astype(np.int64)

    def fit(self, mid: np.ndarray, ends: np.ndarray, labels: np.ndarray) -> TrendBaseline:
        """Choose momentum or reversal by macro-F1 on training windows (ties: momentum)."""
        from lobstream.models.metrics import classification_report

        y = np.asarray(labels, dtype=np.int64)
        if y.size == 0:
            raise ValueError("the trend baseline needs training windows, got none")
        s = self.signal(mid, ends)
        scores = {}
        for name, d in (("momentum", 1), ("reversal", -1)):
            pred = classify_change(d * s, self.alpha).astype(np.int64)
            scores[name] = classification_report(y, pred)["f1_macro"]
        self.direction = 1 if scores["momentum"] >= scores["reversal"] else -1
        self.train_f1_macro = scores
        return self

    def rule(self) -> dict:
        """What was fitted, for reports."""
        return {
            "direction": "momentum" if self.direction > 0 else "reversal",
            "lookback_rows": int(self.lookback),
            "alpha": float(self.alpha),
            "train_f1_macro": self.train_f1_macro,
            "signal": "(mid_t - mean of the window's last k mids incl. t) / that mean",
        }


def baseline_reports(
    raw_rows: np.ndarray,
    levels: int,
    window: int,
    train: tuple[np.ndarray, np.ndarray],
    evaluate_on: dict[str, tuple[np.ndarray, np.ndarray]],
    l2: float = 1e-3,
    *,
    mid: np.ndarray | None = None,
    alpha: float | None = None,
    trend_lookback: int | None = None,
) -> dict[str, dict[str, dict]]:
    """Fit the baselines on ``train`` and score them on each part of ``evaluate_on``.

    Parameters
    ----------
    raw_rows : ndarray (M, F) float32
        RAW rows (the same flat rows whose normalised twin the deep model reads). Not modified.
    levels, window : int
        L and T of the windows.
    train : (ends (N,) int64, labels (N,) int)
        Training windows' last-row indices and labels.
    evaluate_on : dict name -> (ends, labels)
    mid : ndarray (M,) float64, optional
        Mids (row meta ``mid``) of the same rows: with ``alpha`` and ``trend_lookback``, the
        trend baseline is fitted and scored too.
    alpha : float, optional
        The label's threshold (the trend rule classifies with it).
    trend_lookback : int, optional
        ``k`` rows of the trend rule; clipped to ``window`` (it sees only the window).

    Returns
    -------
    dict
        ``{"majority": {name: report}, "logistic": {name: report}}`` with
        :func:`lobstream.models.metrics.classification_report` reports, plus ``"trend": {name:
        report, ..., "rule": TrendBaseline.rule()}`` when ``mid`` is given.
    """
    from lobstream.models.metrics import classification_report

    ofi = order_flow_imbalance(raw_rows)
    ends, y = train
    maj = MajorityClass().fit(y)
    logit = LogisticBaseline(l2=l2).fit(
        imbalance_features(raw_rows, ends, levels, window, ofi=ofi), y
    )
    trend = None
    if mid is not None:
        if alpha is None or trend_lookback is None:
            raise ValueError("the trend baseline needs the label's alpha and a lookback")
        k = max(1, min(int(trend_lookback), window))
        trend = TrendBaseline(k, float(alpha)).fit(mid, ends, y)
    out: dict[str, dict[str, dict]] = {"majority": {}, "logistic": {}}
    if trend is not None:
        out["trend"] = {}
    for name, (e, lab) in evaluate_on.items():
        lab = np.asarray(lab, dtype=np.int64)
        out["majority"][name] = classification_report(lab, maj.predict(len(lab)))
        x = imbalance_features(raw_rows, e, levels, window, ofi=ofi)
        out["logistic"][name] = classification_report(lab, logit.predict(x))
        if trend is not None:
            out["trend"][name] = classification_report(lab, trend.predict(mid, e))
    if trend is not None:
        out["trend"]["rule"] = trend.rule()
    logger.info(
        "baselines: majority class %d; logistic coef norm %.3g; trend %s",
        maj.label,
        float(np.linalg.norm(logit.coef)),
        trend.rule() if trend is not None else "not fitted",
    )
    return out
