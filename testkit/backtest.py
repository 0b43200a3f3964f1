"""The per-row backtest: every row's meta, probabilities and label kept, scored at the end.

The oracle of the streaming backtest (:func:`lobstream.replay.backtest.evaluator.
stream_backtest`): the package's :func:`~lobstream.replay.backtest.run.run_backtest` streams
its rows into a collector here, the whole stream is labelled at once
(:func:`~lobstream.replay.backtest.run.labels_for_rows`) and :func:`evaluate` scores it with
the array trading simulator (:mod:`lobstream.testkit.simulate`). About 77 bytes per feature
row: for tests and benchmarks of small streams only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lobstream.kernels.dtypes import ROW_META_DTYPE
from lobstream.kernels.registry import Registry
from lobstream.models.baselines import TrendBaseline
from lobstream.models.manifest import (
    label_def_from_manifest,
    majority_from_manifest,
    trend_from_manifest,
)
from lobstream.models.metrics import classification_report, confusion_matrix
from lobstream.models.scoring import has_window
from lobstream.replay.backtest import run
from lobstream.replay.backtest.evaluator import baselines_summary, summarise
from lobstream.replay.backtest.run import BacktestResult, labels_for_rows
from lobstream.replay.backtest.trading import (
    DEFAULT_SWEEP,
    Trades,
    TradingConfig,
    signals_from_probs,
)
from lobstream.testkit.simulate import simulate_rows, threshold_sweep


@dataclass
class RowsResult(BacktestResult):
    """:class:`BacktestResult` with the per-row record (one entry per feature row, arrival
    order): ``meta`` (n,) ROW_META_DTYPE (``event_index`` from the start of the stream),
    ``probs`` (n, 3) float32 ((n, H, 3) for H heads; NaN: no full window), ``labels`` (n,)
    int8 (-1: no full horizon)."""

    meta: np.ndarray = field(default_factory=lambda: np.empty(0, ROW_META_DTYPE))
    probs: np.ndarray = field(default_factory=lambda: np.empty((0, 3), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))

    @property
    def scored(self) -> np.ndarray:
        """(n,) bool: rows with both a window and a label."""
        return has_window(self.probs) & (self.labels >= 0)


class RowCollector:
    """An ``on_rows`` sink that keeps every chunk; :meth:`result` joins and labels them."""

    def __init__(self, manifest: dict, then=None) -> None:
        self.manifest = manifest
        self.then = then  # a further sink fed the same chunks (e.g. a streaming evaluator)
        self.metas: list[np.ndarray] = []
        self.probs: list[np.ndarray] = []

    def add(self, meta: np.ndarray, probs: np.ndarray) -> None:
        self.metas.append(meta)
        self.probs.append(probs)
        if self.then is not None:
            self.then(meta, probs)

    def result(self, counted: BacktestResult) -> RowsResult:
        meta = np.concatenate(self.metas) if self.metas else np.empty(0, ROW_META_DTYPE)
        shape = self.probs[0].shape[1:] if self.probs else (3,)
        probs = np.concatenate(self.probs) if self.probs else np.empty((0, *shape), np.float32)
        labels = labels_for_rows(meta, label_def_from_manifest(self.manifest))
        return RowsResult(**vars(counted), meta=meta, probs=probs, labels=labels)


def run_backtest(batches: Iterable[np.ndarray], runner, manifest: dict, **kw) -> RowsResult:
    """The package's ``run_backtest`` (same keywords) keeping and labelling every row;
    ``on_rows``, if given, is fed the chunks too."""
    rows = RowCollector(manifest, kw.pop("on_rows", None))
    counted = run.run_backtest(batches, runner, manifest, on_rows=rows.add, **kw)
    return rows.result(counted)


def backtest_files(
    paths: Iterable[str | Path], model_path: str | Path, **kw
) -> tuple[RowsResult, dict, Registry]:
    """The package's ``backtest_files`` (same keywords but the sink) keeping every row."""
    sinks: list[RowCollector] = []

    def sink(manifest: dict):
        sinks.append(RowCollector(manifest))
        return sinks[0].add

    counted, manifest, registry = run.backtest_files(paths, model_path, sink, **kw)
    return sinks[0].result(counted), manifest, registry


def trend_predictions(meta: np.ndarray, trend: TrendBaseline) -> np.ndarray:
    """Trend predictions (n,) int8 of rows of any instruments, each stream on its own; -1
    where an instrument has fewer than ``lookback`` rows so far."""
    out = np.full(len(meta), -1, np.int8)
    inst = meta["instrument"]
    for i in np.unique(inst):
        idx = np.flatnonzero(inst == i)
        out[idx] = trend.predict_rows(meta["mid"][idx])
    return out


def evaluate(
    result: BacktestResult,
    manifest: dict,
    config: TradingConfig,
    *,
    tick_sizes: Mapping[int, float] | Sequence[float] | None = None,
    thresholds: Sequence[float] = DEFAULT_SWEEP,
) -> tuple[dict, Trades]:
    """Classification report and trading simulation of a backtest, as one JSON-ready dict.

    Returns
    -------
    (summary, trades): ``summary`` holds ``n_events``, ``n_rows``, ``n_windows``,
    ``scorer`` (which :class:`Scorer` ran), ``n_scored``, ``seconds``, ``windows_per_s``, ``metrics`` (:func:`lobstream.models.metrics.
    classification_report` of the argmax against the artifact's labels, on rows with both a
    window and a label), ``trading`` (:func:`lobstream.replay.backtest.trading.trade_stats` at
    ``config.threshold`` plus ``config``, ``sweep`` and ``per_instrument`` stats keyed by
    instrument id) and ``kernel_conditions``.
    """
    if not isinstance(result, RowsResult):
        raise ValueError(
            "this backtest has no per-row record (a streaming run): score it with its "
            "StreamingEvaluator, or run it with lobstream.testkit.backtest.run_backtest"
        )
    if result.probs.ndim == 3:
        raise ValueError(
            f"a {result.probs.shape[1]}-head artifact: score its heads with "
            "lobstream.replay.backtest.evaluator.evaluator_for (what lobstream backtest does)"
        )
    scored = result.scored
    y_pred = np.argmax(result.probs[scored], axis=1)
    y = result.labels[scored]
    metrics = classification_report(y, y_pred)
    # baselines on exactly the model's scored rows
    maj = majority_from_manifest(manifest)
    cm_maj = confusion_matrix(y, np.full(len(y), 0 if maj is None else maj))
    trend, rule = trend_from_manifest(manifest)
    cm_trend = None
    if trend is not None:
        tp = trend_predictions(result.meta, trend)[scored]
        ok = tp >= 0
        cm_trend = confusion_matrix(y[ok], tp[ok])
    baselines = baselines_summary(maj, cm_maj, rule, cm_trend)
    signal = signals_from_probs(result.probs, config.threshold)
    trades = simulate_rows(signal, result.meta, config, tick_sizes)
    sweep = threshold_sweep(result.probs, result.meta, config, thresholds, tick_sizes)
    instruments = np.unique(result.meta["instrument"])
    summary = summarise(
        result, manifest, config, metrics, int(scored.sum()), trades, sweep, instruments, baselines
    )
    return summary, trades
