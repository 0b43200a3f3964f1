"""Scoring a backtest as its rows stream past: memory bounded by instruments, not by rows.

:class:`StreamingEvaluator` is the ``on_rows`` sink of :func:`lobstream.replay.backtest.run.
run_backtest`. Each chunk of scored rows goes

- to :class:`~lobstream.replay.backtest.trading.StreamingTrader`, which simulates the trading at
  the chosen threshold and at every sweep threshold in one pass (no lookahead: orders in flight
  wait for their fill row);
- to the signal counts per time-of-day bin (rows with a window, at the chosen threshold);
- to the trend baseline (a carry of the last ``k - 1`` mids per instrument);
- to :class:`~lobstream.kernels.labels.StreamingLabels`, which holds each row (its
  probabilities and the trend baseline's prediction) until its label is known, then hands it
  on to the confusion matrices (model, majority and trend baselines) and the calibration bins.

:meth:`StreamingEvaluator.summary` returns the report; ``testkit/backtest.py`` keeps
every row and scores them all at the end, and the two agree: equal counts, metrics from the
same confusion matrix, the same trades in the same order (so the same trading statistics to
the last bit). Only the calibration bins' float sums are added in another order (plots only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict

import numpy as np

from lobstream.kernels.dtypes import CLASS_NAMES
from lobstream.kernels.labels import StreamingLabels
from lobstream.models.manifest import (
    label_def_from_manifest,
    majority_from_manifest,
    trend_from_manifest,
)
from lobstream.models.metrics import confusion_matrix, report_from_confusion
from lobstream.replay.backtest.plots import (
    calibration_counts,
    calibration_table_from_counts,
    signal_counts_by_bin,
)
from lobstream.replay.backtest.run import BacktestResult, ProgressFn, run_backtest
from lobstream.replay.backtest.trading import (
    DEFAULT_SWEEP,
    StreamingTrader,
    Trades,
    TradingConfig,
    signals_from_probs,
    trade_stats,
)

_SLICE_ROWS = 16_384  # rows per step of add(): ~1 MB of temporaries per step


class StreamingEvaluator:
    """Classification report, trading simulation and plot data of a stream of scored rows.

    Parameters
    ----------
    manifest : the artifact's manifest (its label definition labels the rows).
    config : trading rules; ``config.threshold`` is the reported one.
    thresholds : the threshold sweep.
    n_instruments : instrument ids expected (state grows if more appear).
    calibration_bins : probability bins of the calibration counts.
    signal_bin_minutes : width of the time-of-day bins of the signal counts.
    """

    def __init__(
        self,
        manifest: dict,
        config: TradingConfig,
        thresholds: Sequence[float] = DEFAULT_SWEEP,
        *,
        n_instruments: int = 1,
        calibration_bins: int = 10,
        signal_bin_minutes: int = 15,
    ) -> None:
        self.manifest = manifest
        self.config = config
        self.sweep = tuple(float(t) for t in thresholds)
        label = label_def_from_manifest(manifest)
        # payload: the 3 probabilities and the trend baseline's prediction
        horizon, unit = label.kernel_args()
        self.labels = StreamingLabels(horizon, unit, label.alpha, width=4, kind=label.kind)
        self.majority = majority_from_manifest(manifest)
        self.trend, self.trend_rule = trend_from_manifest(manifest)
        self._trend_carry: dict[int, np.ndarray] = {}  # last k - 1 mids per instrument
        sim = list(self.sweep)
        if float(config.threshold) not in sim:
            sim.append(float(config.threshold))
        self._chosen = sim.index(float(config.threshold))
        self.trader = StreamingTrader(config, sim, n_instruments)
        n_classes = len(CLASS_NAMES)
        self.confusion = np.zeros((n_classes, n_classes), np.int64)
        self.confusion_majority = np.zeros((n_classes, n_classes), np.int64)
        self.confusion_trend = np.zeros((n_classes, n_classes), np.int64)
        self.calibration = (
            np.zeros((n_classes, calibration_bins), np.int64),
            np.zeros((n_classes, calibration_bins), np.float64),
            np.zeros((n_classes, calibration_bins), np.int64),
        )
        self.signal_bin_minutes = int(signal_bin_minutes)
        self.signal_counts = np.zeros((3, 1440 // self.signal_bin_minutes), np.int64)
        self.n_rows = 0
        self.n_scored = 0
        self._finished = False

    def add(self, meta: np.ndarray, probs: np.ndarray) -> None:
        """Take the next chunk of scored rows (``run_backtest``'s ``on_rows``).

        Parameters
        ----------
        meta : (m,) ROW_META_DTYPE in arrival order. Not modified.
        probs : (m, 3) float32, NaN for rows without a window. Not modified.
        """
        if self._finished:
            raise RuntimeError("StreamingEvaluator.add after finish(): start a new evaluator")
        # slices of a bounded size: the temporaries stay small whatever the reader's batch
        for s in range(0, len(meta), _SLICE_ROWS):
            m, p = meta[s : s + _SLICE_ROWS], probs[s : s + _SLICE_ROWS]
            self.trader.add(m, p)
            has = ~np.isnan(p[:, 0])
            self.signal_counts += signal_counts_by_bin(
                m["ts_event"][has],
                signals_from_probs(p[has], self.config.threshold),
                self.signal_bin_minutes,
            )
            payload = np.column_stack([p, self._trend_predictions(m)]).astype(np.float32)
            self._score(*self.labels.add(m["instrument"], m["mid"], m["ts_event"], payload))
            self.n_rows += len(m)

    def _trend_predictions(self, meta: np.ndarray) -> np.ndarray:
        """The trend baseline's prediction (m,) float32 of each row (-1: none), from each
        instrument's carried last ``k - 1`` mids and the new rows (equal to the whole-stream
        path's, see :meth:`TrendBaseline.signal`)."""
        out = np.full(len(meta), -1.0, np.float32)
        if self.trend is None:
            return out
        keep = self.trend.lookback - 1
        inst = meta["instrument"]
        for i in np.unique(inst).tolist():
            idx = np.flatnonzero(inst == i)
            carry = self._trend_carry.get(i, np.empty(0, np.float64))
            mids = np.concatenate((carry, meta["mid"][idx]))
            out[idx] = self.trend.predict_rows(mids)[len(carry) :]
            self._trend_carry[i] = mids[max(0, len(mids) - keep) :]
        return out

    def finish(self) -> None:
        """End of the stream: the last rows get label -1, open positions close at the end."""
        if self._finished:
            return
        self._score(*self.labels.finish())
        self.trader.finish()
        self._finished = True

    def _score(self, payload: np.ndarray, labels: np.ndarray) -> None:
        probs = payload[:, :3]
        ok = ~np.isnan(probs[:, 0]) & (labels >= 0)
        if not ok.any():
            return
        p, y = probs[ok], labels[ok]
        n_classes = len(CLASS_NAMES)
        self.confusion += confusion_matrix(y, np.argmax(p, axis=1), n_classes)
        # the baselines on exactly the rows the model is scored on
        maj = 0 if self.majority is None else self.majority
        self.confusion_majority += confusion_matrix(y, np.full(len(y), maj), n_classes)
        tp = payload[ok, 3].astype(np.int64)
        has = tp >= 0
        if has.any():
            self.confusion_trend += confusion_matrix(y[has], tp[has], n_classes)
        for acc, part in zip(
            self.calibration, calibration_counts(p, y, self.calibration[0].shape[1]), strict=True
        ):
            acc += part
        self.n_scored += int(ok.sum())

    def merge(self, other: StreamingEvaluator) -> StreamingEvaluator:
        """Add ``other``'s counts and trades to this evaluator (in place; returns ``self``).

        Both must be finished and must have scored disjoint sets of instruments (each
        instrument's whole stream in one of them: its labels, trend carry and positions run
        across chunks and files, so a split stream would not add up). Then every count adds
        (confusion matrices, signal counts, rows, integer calibration counts) and the trades
        join; the result is what one evaluator fed both streams gives: equal confusion,
        signal counts, trades and summary, whatever the order of the merges, once the row
        numbers of both are those of the one stream (:meth:`remap_rows`). Only the
        calibration bins' float sums are added in another order (plots only).
        """
        if not (self._finished and other._finished):
            raise RuntimeError("merge() needs finished evaluators: call finish() on both first")
        mine = (self.sweep, self.config, self.manifest.get("label"), self.signal_bin_minutes)
        theirs = (other.sweep, other.config, other.manifest.get("label"), other.signal_bin_minutes)
        if mine != theirs:
            raise ValueError(
                "merge() of evaluators with different sweeps, trading configs, labels or "
                f"signal bins: {mine} vs {theirs}"
            )
        if self.calibration[0].shape != other.calibration[0].shape:
            raise ValueError("merge() of evaluators with different calibration bins")
        self.trader.merge(other.trader)
        self.confusion += other.confusion
        self.confusion_majority += other.confusion_majority
        self.confusion_trend += other.confusion_trend
        for acc, part in zip(self.calibration, other.calibration, strict=True):
            acc += part
        self.signal_counts += other.signal_counts
        self.n_rows += other.n_rows
        self.n_scored += other.n_scored
        return self

    def remap_rows(self, local_starts: Sequence[int], global_starts: Sequence[int]) -> None:
        """Renumber the rows this evaluator saw: the rows from ``local_starts[j]`` up to the
        next start are the rows from ``global_starts[j]`` on of the whole stream (one
        segment per file). Trades name rows by number, and the order of trades with equal
        exit times is by row, so evaluators of parts of a stream are renumbered into the
        stream's numbering before :meth:`merge`."""
        self.trader.remap_rows(local_starts, global_starts)

    def calibration_table(self) -> list[dict]:
        """Reliability per class (see :func:`lobstream.replay.backtest.plots.calibration_table`)."""
        return calibration_table_from_counts(*self.calibration)

    def trades(
        self, threshold: float | None = None, tick_sizes: Mapping[int, float] | None = None
    ) -> Trades:
        """Trades at ``threshold`` (default: the chosen one; sweep thresholds too)."""
        thr = self.trader.thresholds
        k = self._chosen if threshold is None else thr.index(float(threshold))
        return self.trader.trades(k, tick_sizes)

    def summary(
        self,
        result: BacktestResult,
        tick_sizes: Mapping[int, float] | Sequence[float] | None = None,
    ) -> tuple[dict, Trades]:
        """The backtest's report: metrics, baselines, trading and its sweep (:func:`summarise`).

        Parameters
        ----------
        result : the :func:`run_backtest` result of the run that fed this evaluator (counts,
            time, kernel conditions).
        tick_sizes : quote currency per tick by instrument id (default 1.0: P&L in ticks).

        Returns
        -------
        (summary, trades at ``config.threshold``).
        """
        if not self._finished:
            raise RuntimeError("summary() before finish(): rows may still wait for labels")
        if result.n_rows != self.n_rows:
            raise ValueError(
                f"the result counts {result.n_rows} rows but this evaluator was given "
                f"{self.n_rows}: pass the result of the run that fed it"
            )
        metrics = report_from_confusion(self.confusion)
        trades = self.trader.trades(self._chosen, tick_sizes)
        sweep = [
            {"threshold": thr, **trade_stats(self.trader.trades(k, tick_sizes))}
            for k, thr in enumerate(self.sweep)
        ]
        baselines = baselines_summary(
            self.majority,
            self.confusion_majority,
            self.trend_rule,
            None if self.trend is None else self.confusion_trend,
        )
        summary = summarise(
            result,
            self.manifest,
            self.config,
            metrics,
            self.n_scored,
            trades,
            sweep,
            self.trader.instruments,
            baselines,
        )
        return summary, trades


def baselines_summary(
    majority: int | None,
    cm_majority: np.ndarray,
    trend_rule: dict,
    cm_trend: np.ndarray | None,
) -> dict:
    """The backtest's baseline reports from their confusion matrices (3, 3), on the model's
    scored rows. The logistic baseline needs RAW-row imbalance features and coefficients that
    the manifest does not keep: its training-time scores are in the manifest's ``baselines``."""
    out: dict = {}
    if majority is not None and cm_majority.sum() > 0:
        out["majority"] = {**report_from_confusion(cm_majority), "class": int(majority)}
    if cm_trend is not None and cm_trend.sum() > 0:
        out["trend"] = {**report_from_confusion(cm_trend), "rule": trend_rule}
    return out


def summarise(
    result: BacktestResult,
    manifest: dict,
    config: TradingConfig,
    metrics: dict,
    n_scored: int,
    trades: Trades,
    sweep: list[dict],
    instruments: np.ndarray,
    baselines: dict | None = None,
) -> dict:
    """The JSON-ready summary of a scored backtest (:meth:`StreamingEvaluator.summary`).

    Parameters
    ----------
    metrics : the classification report. n_scored : rows with a window and a label.
    trades : the trades at ``config.threshold``. sweep : one stats dict per sweep threshold.
    instruments : (k,) ids of the instruments that had rows (keys of ``per_instrument``).
    baselines : :func:`baselines_summary` of the same rows.
    """
    trading = {
        **trade_stats(trades),
        "config": asdict(config),
        "sweep": sweep,
        "per_instrument": {
            str(int(i)): trade_stats(_subset(trades, trades.instrument == i)) for i in instruments
        },
    }
    return {
        "model": {
            "arch": manifest.get("arch"),
            "T": manifest.get("T"),
            "label": manifest.get("label"),
            # what the labels below are, also for manifests without a kind (smoothed)
            "label_kind": label_def_from_manifest(manifest).kind,
        },
        "n_events": result.n_events,
        "n_rows": result.n_rows,
        "n_windows": result.n_windows,
        # "incremental" (causal artifact, per-row caches) or "full-window"
        "scorer": result.scorer,
        "n_scored": n_scored,
        "seconds": result.seconds,
        "windows_per_s": result.n_windows / result.seconds if result.seconds > 0 else 0.0,
        "metrics": metrics,
        "baselines": baselines or {},
        "trading": trading,
        "kernel_conditions": result.report,
    }


def _subset(trades: Trades, mask: np.ndarray) -> Trades:
    return Trades(*(col[mask] for col in trades))


def evaluator_for(
    manifest: dict,
    config: TradingConfig,
    thresholds: Sequence[float] = DEFAULT_SWEEP,
    n_instruments: int = 1,
) -> StreamingEvaluator:
    """The evaluator of an artifact's backtest: what ``lobstream backtest`` (one process or
    on Ray, :mod:`lobstream.replay.distributed`) scores its rows with.

    Callers use only its interface (``add``, ``finish``, ``summary``, ``merge``,
    ``remap_rows``, ``calibration_table``, ``signal_counts``, ``signal_bin_minutes``), so the
    kind of evaluator can follow the manifest without them changing: a multi-horizon
    artifact gets a :class:`~lobstream.replay.backtest.heads.MultiHeadEvaluator`."""
    if manifest.get("heads") and len(manifest["heads"]) > 1:
        from lobstream.replay.backtest.heads import MultiHeadEvaluator

        return MultiHeadEvaluator(manifest, config, thresholds, n_instruments=n_instruments)
    return StreamingEvaluator(manifest, config, thresholds, n_instruments=n_instruments)


def stream_backtest(
    batches: Iterable[np.ndarray],
    runner,
    manifest: dict,
    config: TradingConfig,
    *,
    thresholds: Sequence[float] = DEFAULT_SWEEP,
    n_instruments: int = 1,
    batch: int | None = None,
    max_rows: int | None = None,
    on_progress: ProgressFn | None = None,
) -> tuple[BacktestResult, StreamingEvaluator]:
    """:func:`run_backtest` into the evaluator of the artifact (:func:`evaluator_for`).

    Returns
    -------
    (result, evaluator): ``result`` holds counts and time; call
    ``evaluator.summary(result, tick_sizes)`` for the report.
    """
    ev = evaluator_for(manifest, config, thresholds, n_instruments=n_instruments)
    result = run_backtest(
        batches,
        runner,
        manifest,
        n_instruments=n_instruments,
        batch=batch,
        max_rows=max_rows,
        on_progress=on_progress,
        on_rows=ev.add,
    )
    ev.finish()
    return result, ev
