"""In-process backtest: files -> events -> feature rows -> windows -> model -> probabilities.

The same kernels as the daemon (:func:`lobstream.kernels.features.events_to_rows` shares its
row arithmetic with the daemon's ring writer), the same :class:`~lobstream.models.runner.
ModelRunner`, the artifact's own feature spec and label definition. Windows are never
materialised: per instrument, the last ``T - 1`` rows of the previous chunk are kept, the new
rows appended, and each window is a strided view ``rows[j : j + T]`` copied straight into the
runner's preallocated input buffer, ``B`` windows per model call.

A causal artifact (``manifest["causal"]``, e.g. ``cnn_causal``, ``deeplob_causal``) is scored
incrementally instead (:class:`CausalScorer`): one :class:`~lobstream.models.incremental.
IncrementalRunner` slot per instrument, every row pushed once in arrival order, so a row costs
one column of convolutions plus the head rather than a whole window. Same probabilities as the
full window (float32 round-off), same NaN rows; :func:`make_scorer` picks the scorer and
``scorer="full-window"`` forces the old path for comparison.

Memory: the chunk buffers are fixed (``batch_rows`` events of rows at a time) and the window
carry is ``T - 1`` rows per instrument. Two ways to consume the scored rows:

- streaming (``keep_rows=False`` with an ``on_rows`` sink, what ``lobstream backtest`` does):
  :class:`lobstream.replay.backtest.evaluator.StreamingEvaluator` labels rows with a lookahead of one
  label horizon per instrument, adds them to the confusion matrix, calibration bins and signal
  counts, and simulates the trading at every threshold with a few integers of state per
  (threshold, instrument). Memory is O(instruments x (T + label horizon)) plus the completed
  trades (80 bytes each); it does not grow with the number of rows (``python -m
  bench.backtest_memory`` measures it).
- per-row (``keep_rows=True``, the default, for tests and tools that need each row's
  probabilities): the compact per-row record is kept (row meta 64 bytes, probabilities 12,
  label 1: about 77 bytes per feature row, 3 GB for a year of one stock at 40 M rows), and
  :func:`evaluate` scores it all at the end. Never the ``T x F`` windows (16 kB each).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lobstream.kernels.book import BookState, new_book, new_report
from lobstream.kernels.dtypes import CODE_NAMES, ROW_META_DTYPE
from lobstream.kernels.features import FeatureSpec, events_to_rows
from lobstream.kernels.labels import LABEL_NONE, mid_labels
from lobstream.kernels.registry import Registry
from lobstream.models.baselines import TrendBaseline
from lobstream.models.manifest import (
    LabelDef,
    label_def_from_manifest,
    majority_from_manifest,
    spec_from_manifest,
    trend_from_manifest,
)
from lobstream.replay.backtest.simulate import (
    DEFAULT_SWEEP,
    Trades,
    TradingConfig,
    signals_from_probs,
    simulate_rows,
    threshold_sweep,
    trade_stats,
)

if TYPE_CHECKING:
    from lobstream.models.incremental import IncrementalRunner

logger = logging.getLogger(__name__)

# what make_scorer / backtest_files / ``lobstream backtest --scorer`` accept
SCORERS = ("auto", "incremental", "full-window")

# progress(events_done, rows_done, windows_done)
ProgressFn = Callable[[int, int, int], None]
# rows(meta (m,) ROW_META_DTYPE, probs (m, 3) f4, (m, H, 3) for H heads) of each scored chunk
RowsFn = Callable[[np.ndarray, np.ndarray], None]


@dataclass
class BacktestResult:
    """Per-row record of a backtest (every array has one entry per feature row, arrival order).

    Attributes
    ----------
    meta : (n,) ROW_META_DTYPE; ``event_index`` counts events from the start of the stream.
    probs : (n, 3) float32, down/flat/up ((n, H, 3) for a multi-horizon artifact); NaN for
        rows without a full window.
    labels : (n,) int8, 0/1/2, or -1 (no full horizon, see kernels.labels).
    n_rows : feature rows scored; equals ``len(meta)`` when the rows were kept, while a
        streaming run (``keep_rows=False``) keeps none and its arrays are empty.
    """

    meta: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    n_events: int
    n_windows: int
    seconds: float
    report: dict = field(default_factory=dict)
    n_rows: int | None = None
    scorer: str = "full-window"  # Scorer.name of the scorer that ran

    def __post_init__(self) -> None:
        if self.n_rows is None:
            self.n_rows = len(self.meta)

    @property
    def rows_kept(self) -> bool:
        """Whether the per-row arrays hold every row (``keep_rows=True``)."""
        return self.n_rows == len(self.meta)

    @property
    def scored(self) -> np.ndarray:
        """(n,) bool: rows with both a window and a label."""
        return has_window(self.probs) & (self.labels >= 0)


def has_window(probs: np.ndarray) -> np.ndarray:
    """(n,) bool: rows of probabilities (n, 3) or (n, H, 3) that had a full window (not NaN)."""
    return ~np.isnan(probs.reshape(len(probs), -1)[:, 0])


def trend_predictions(meta: np.ndarray, trend: TrendBaseline) -> np.ndarray:
    """Trend predictions (n,) int8 of rows of any instruments, each stream on its own; -1
    where an instrument has fewer than ``lookback`` rows so far."""
    out = np.full(len(meta), -1, np.int8)
    inst = meta["instrument"]
    for i in np.unique(inst):
        idx = np.flatnonzero(inst == i)
        out[idx] = trend.predict_rows(meta["mid"][idx])
    return out


def baselines_summary(
    majority: int | None,
    cm_majority: np.ndarray,
    trend_rule: dict,
    cm_trend: np.ndarray | None,
) -> dict:
    """The backtest's baseline reports from their confusion matrices (3, 3), on the model's
    scored rows. The logistic baseline needs RAW-row imbalance features and coefficients that
    the manifest does not keep: its training-time scores are in the manifest's ``baselines``."""
    from lobstream.models.metrics import report_from_confusion

    out: dict = {}
    if majority is not None and cm_majority.sum() > 0:
        out["majority"] = {**report_from_confusion(cm_majority), "class": int(majority)}
    if cm_trend is not None and cm_trend.sum() > 0:
        out["trend"] = {**report_from_confusion(cm_trend), "rule": trend_rule}
    return out


class Scorer(Protocol):
    """Feature rows (any instruments, arrival order, chunk after chunk) -> probabilities.

    ``name`` says which path scores ("full-window" or "incremental", in the report);
    ``n_windows`` counts the rows that got probabilities so far."""

    name: str
    n_windows: int

    def score(self, rows: np.ndarray, meta: np.ndarray) -> np.ndarray: ...


class WindowScorer:
    """Feature rows (any instruments, arrival order) -> model probabilities per row.

    Keeps, per instrument, the last ``T - 1`` rows seen so that windows continue across chunks.
    ``runner`` needs ``input`` (a (Bmax, 1, T, F) float32 numpy array) and ``infer(n)``.
    """

    name = "full-window"

    def __init__(self, runner, window: int, n_features: int, batch: int | None = None) -> None:
        self.runner = runner
        self.T = int(window)
        self.F = int(n_features)
        buf = runner.input
        if buf.shape[1:] != (1, self.T, self.F):
            raise ValueError(
                f"runner input buffer has shape {buf.shape}; expected (B, 1, {self.T}, "
                f"{self.F}) for T={self.T}, F={self.F}"
            )
        self.batch = min(int(batch or buf.shape[0]), buf.shape[0])
        self.out_shape = tuple(getattr(runner, "out_shape", (3,)))
        self._carry: dict[int, np.ndarray] = {}
        self.n_windows = 0

    def score(self, rows: np.ndarray, meta: np.ndarray) -> np.ndarray:
        """Probabilities of every row's window.

        Parameters
        ----------
        rows : (m, F) float32, normalised feature rows. Not modified.
        meta : (m,) ROW_META_DTYPE of those rows.

        Returns
        -------
        (m, 3) float32 ((m, H, 3) for H heads), NaN for rows with fewer than T - 1 rows of
        their instrument before them.
        """
        m = len(meta)
        probs = np.full((m, *self.out_shape), np.nan, np.float32)
        if m == 0:
            return probs
        inst = meta["instrument"]
        ids = np.unique(inst)
        for i in ids.tolist():
            idx = None if len(ids) == 1 else np.flatnonzero(inst == i)
            own = rows[:m] if idx is None else rows[idx]
            carry = self._carry.get(i)
            stacked = own if carry is None else np.concatenate((carry, own))
            n_prev = 0 if carry is None else len(carry)
            n_win = len(stacked) - self.T + 1
            if n_win > 0:
                out = self._infer_all(stacked, n_win)
                first = self.T - 1 - n_prev  # the first own row that ends a window
                if idx is None:
                    probs[first:] = out
                else:
                    probs[idx[first:]] = out
            self._carry[i] = stacked[-(self.T - 1) :].copy() if self.T > 1 else stacked[:0]
        return probs

    def _infer_all(self, stacked: np.ndarray, n_win: int) -> np.ndarray:
        # windows[j] == stacked[j : j + T]: a strided view, no copy until the buffer write
        windows = np.lib.stride_tricks.sliding_window_view(stacked, (self.T, self.F))[:, 0]
        out = np.empty((n_win, *self.out_shape), np.float32)
        buf = self.runner.input
        b = self.batch
        for s in range(0, n_win, b):
            n = min(b, n_win - s)
            np.copyto(buf[:n, 0], windows[s : s + n])
            out[s : s + n] = self.runner.infer(n)
        self.n_windows += n_win
        return out


class CausalScorer:
    """:class:`WindowScorer`'s ``score`` for a causal model, by incremental inference.

    Instrument ``i`` is slot ``i`` of an :class:`~lobstream.models.incremental.
    IncrementalRunner`; each chunk's rows are pushed in arrival order. The runner's state plays
    the part of WindowScorer's ``T - 1`` carried rows, and like that carry it is never reset:
    WindowScorer's windows run across snapshots and gaps, so these must too for the
    probabilities to be the same. A row with fewer than ``T - 1`` rows of its instrument before
    it is NaN in both.

    Parameters
    ----------
    runner : the incremental runner of the artifact (slots ``0 .. n_slots - 1``).
    grow : ``grow(n)`` builds another runner of ``n`` slots of the same model, for instrument
        ids beyond the slots so far (readers register instruments as they meet them). Without
        it an id beyond ``runner.n_slots`` is refused.
    """

    name = "incremental"

    def __init__(
        self,
        runner: IncrementalRunner,
        grow: Callable[[int], IncrementalRunner] | None = None,
    ) -> None:
        # (first instrument id, runner) per block of slots; runners are never resized in place
        self._blocks: list[tuple[int, Any]] = [(0, runner)]
        self._capacity = int(runner.n_slots)
        self._grow = grow
        self.T = int(runner.T)
        self.F = int(runner.F)
        self.out_shape = tuple(getattr(runner, "out_shape", (3,)))
        self.n_windows = 0

    def _ensure(self, top: int) -> None:
        while top >= self._capacity:
            if self._grow is None:
                raise ValueError(
                    f"instrument id {top} is beyond the incremental runner's "
                    f"{self._capacity} slots: build it with n_slots > {top}"
                )
            n = max(self._capacity, top + 1 - self._capacity)  # doubling: few blocks
            self._blocks.append((self._capacity, self._grow(n)))
            self._capacity += n

    def score(self, rows: np.ndarray, meta: np.ndarray) -> np.ndarray:
        """Probabilities of every row's window; see :meth:`WindowScorer.score`."""
        m = len(meta)
        if m == 0:
            return np.full((0, *self.out_shape), np.nan, np.float32)
        if rows.shape[1] != self.F:
            raise ValueError(f"rows have {rows.shape[1]} features; the model takes {self.F}")
        inst = meta["instrument"].astype(np.int64)
        self._ensure(int(inst.max()))
        if len(self._blocks) == 1:
            probs = self._blocks[0][1].push(inst, rows[:m])
        else:
            probs = np.full((m, *self.out_shape), np.nan, np.float32)
            for base, runner in self._blocks:
                sel = np.flatnonzero((inst >= base) & (inst < base + runner.n_slots))
                if len(sel):
                    probs[sel] = runner.push(inst[sel] - base, rows[sel])
        self.n_windows += int(np.count_nonzero(has_window(probs)))
        return probs


def scorer_for(runner, window: int, n_features: int, batch: int | None = None) -> Scorer:
    """The scorer of a runner: an ``IncrementalRunner`` (it has ``push``) scores incrementally,
    a ``ModelRunner``-like one (``input`` + ``infer``) by full windows; a scorer passes as is."""
    if hasattr(runner, "score"):
        return runner
    if hasattr(runner, "push") and hasattr(runner, "reset"):
        if int(runner.T) != int(window) or int(runner.F) != int(n_features):
            raise ValueError(
                f"incremental runner has T={runner.T}, F={runner.F}; the manifest says "
                f"T={window}, F={n_features}"
            )
        return CausalScorer(runner)
    return WindowScorer(runner, window, n_features, batch)


def choose_scorer(manifest: dict, scorer: str = "auto", device: str = "cpu") -> str:
    """ "incremental" or "full-window" for an artifact.

    ``auto``: incremental when the manifest says the model is causal and the device is the
    CPU (the incremental kernels run there; on a GPU big full-window batches are what the
    device wants). ``incremental`` on a non-causal artifact is refused."""
    from lobstream.models.incremental import is_causal

    if scorer not in SCORERS:
        raise ValueError(f"scorer {scorer!r}: expected one of {SCORERS}")
    causal = is_causal(manifest)
    if scorer == "incremental" and not causal:
        raise ValueError(
            f"the {manifest.get('arch')} artifact is not causal (no 'causal' in its manifest): "
            "incremental scoring needs a causal model; use the full-window scorer"
        )
    if scorer != "auto":
        return scorer
    if not causal:
        return "full-window"
    from lobstream.models.artifact import resolve_device

    return "incremental" if resolve_device(device).type == "cpu" else "full-window"


def make_scorer(
    module,
    manifest: dict,
    *,
    scorer: str = "auto",
    device: str = "cpu",
    batch: int = 256,
    threads: int | None = None,
    n_instruments: int = 1,
) -> Scorer:
    """The scorer of a loaded artifact (see :func:`choose_scorer`): a :class:`CausalScorer`
    with ``n_instruments`` slots to start with (more as instruments appear), or a
    :class:`WindowScorer` over a :class:`~lobstream.models.runner.ModelRunner`."""
    T = int(manifest["T"])
    F = spec_from_manifest(manifest).n_features
    if choose_scorer(manifest, scorer, device) == "incremental":
        from lobstream.models.incremental import IncrementalRunner

        def grow(n: int) -> IncrementalRunner:
            return IncrementalRunner(module, manifest, n_slots=n)

        first = grow(max(1, n_instruments))
        if first.F != F:
            raise ValueError(f"the model takes F={first.F} features; the manifest's spec {F}")
        return CausalScorer(first, grow)
    from lobstream.models.runner import ModelRunner

    runner = ModelRunner(module, manifest, device=device, max_batch=batch, threads=threads)
    return WindowScorer(runner, T, F, batch)


def rows_from_events(
    batches: Iterable[np.ndarray],
    spec: FeatureSpec,
    n_instruments: int,
    report: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Feature rows of each event batch: yields ``(rows (m, F) f4, meta (m,), n_events)``.

    The yielded arrays are views of buffers reused for the next batch: copy to keep them.
    The book grows when an instrument id beyond ``n_instruments`` appears (readers register
    instruments as they meet them).
    """
    book = new_book(max(1, n_instruments))
    report = new_report() if report is None else report
    rows = np.empty((0, spec.n_features), np.float32)
    meta = np.empty(0, ROW_META_DTYPE)
    for ev in batches:
        n = len(ev)
        if n == 0:
            continue
        if len(rows) < n:
            rows = np.empty((n, spec.n_features), np.float32)
            meta = np.empty(n, ROW_META_DTYPE)
        top = int(ev["instrument"].max())
        if top >= book.n_instruments:
            book = _grow(book, top + 1)
        m = events_to_rows(book, spec, ev, rows, meta, report)
        del ev  # not kept alive while the consumer asks the source for the next batch
        yield rows[:m], meta[:m], n


def _grow(book: BookState, n: int) -> BookState:
    new = new_book(n, book.width)
    for old, fresh in zip(book, new, strict=True):
        fresh[: len(old)] = old
    return new


def labels_for_rows(meta: np.ndarray, label: LabelDef) -> np.ndarray:
    """Labels (n,) int8 of rows of any instruments, each instrument's stream on its own."""
    out = np.full(len(meta), LABEL_NONE, np.int8)
    inst = meta["instrument"]
    for i in np.unique(inst):
        idx = np.flatnonzero(inst == i)
        mid = np.ascontiguousarray(meta["mid"][idx], np.float64)
        ts = np.ascontiguousarray(meta["ts_event"][idx], np.int64)
        k, unit = label.kernel_args()
        out[idx] = mid_labels(mid, k, label.alpha, ts, unit, label.kind)
    return out


def run_backtest(
    batches: Iterable[np.ndarray],
    runner,
    manifest: dict,
    *,
    n_instruments: int = 1,
    batch: int | None = None,
    max_rows: int | None = None,
    on_progress: ProgressFn | None = None,
    keep_rows: bool = True,
    on_rows: RowsFn | None = None,
) -> BacktestResult:
    """Score every window of an event stream; keep and label every row, or stream them out.

    Parameters
    ----------
    batches : iterable of (n,) EVENT_DTYPE arrays, e.g. :func:`lobstream.replay.readers.
        read_events`.
    runner : a :class:`lobstream.models.runner.ModelRunner` of the artifact (full windows),
        an :class:`lobstream.models.incremental.IncrementalRunner` (causal artifacts, with a
        slot per instrument id), or a ready :class:`Scorer` (:func:`make_scorer`).
    manifest : the artifact's manifest (feature spec, T, label definition).
    n_instruments : instruments expected (the book grows if more appear).
    batch : windows per model call (default: the runner's buffer size).
    max_rows : stop after this many feature rows (for benchmarks and quick looks).
    on_progress : called after each event batch with (events, rows, windows) so far.
    keep_rows : keep the per-row record (meta, probs, labels) in the result. ``False`` keeps
        none (memory independent of the stream's length): consume the rows with ``on_rows``.
    on_rows : called with ``(meta (m,) ROW_META_DTYPE, probs (m, 3) float32)`` of each chunk
        of scored rows, in arrival order (``event_index`` counted from the start of the
        stream). The arrays are the callee's to keep; e.g.
        :meth:`lobstream.replay.backtest.evaluator.StreamingEvaluator.add`.
    """
    spec = spec_from_manifest(manifest)
    label = label_def_from_manifest(manifest)
    T = int(manifest["T"])
    scorer = scorer_for(runner, T, spec.n_features, batch)
    report = new_report()
    metas, probs = [], []
    n_events = n_rows = 0
    t0 = time.perf_counter()
    for rows, meta, n in rows_from_events(batches, spec, n_instruments, report):
        if max_rows is not None and n_rows + len(meta) > max_rows:
            rows, meta = rows[: max_rows - n_rows], meta[: max_rows - n_rows]
        p = scorer.score(rows, meta)
        meta = meta.copy()
        meta["event_index"] += n_events  # index in the whole stream, not in its batch
        if on_rows is not None:
            on_rows(meta, p)
        if keep_rows:
            probs.append(p)
            metas.append(meta)
        n_events += n
        n_rows += len(meta)
        # without keep_rows this chunk is the sink's now: not alive while the next is scored
        del rows, meta, p
        if on_progress is not None:
            on_progress(n_events, n_rows, scorer.n_windows)
        if max_rows is not None and n_rows >= max_rows:
            break
    meta_all = np.concatenate(metas) if metas else np.empty(0, ROW_META_DTYPE)
    shape = getattr(scorer, "out_shape", (3,))
    probs_all = np.concatenate(probs) if probs else np.empty((0, *shape), np.float32)
    labels = labels_for_rows(meta_all, label)
    seconds = time.perf_counter() - t0
    counts = {CODE_NAMES[c]: int(report[0, c]) for c in range(len(CODE_NAMES)) if report[0, c]}
    if counts:
        logger.info("kernel conditions during the backtest: %s", counts)
    return BacktestResult(
        meta_all,
        probs_all,
        labels,
        n_events,
        scorer.n_windows,
        seconds,
        counts,
        n_rows,
        scorer.name,
    )


def backtest_files(
    paths: Iterable[str | Path],
    model_path: str | Path,
    *,
    registry: Registry | None = None,
    fmt: str = "auto",
    device: str = "cpu",
    threads: int | None = None,
    batch: int = 256,
    batch_rows: int | None = None,
    skip_bad: bool = False,
    max_rows: int | None = None,
    on_progress: ProgressFn | None = None,
    keep_rows: bool = True,
    rows_sink: Callable[[dict], RowsFn] | None = None,
    scorer: str = "auto",
) -> tuple[BacktestResult, dict, Registry]:
    """Load the artifact, read the files and run :func:`run_backtest`.

    Parameters
    ----------
    scorer : one of :data:`SCORERS` (see :func:`choose_scorer`): ``auto`` scores a causal
        artifact incrementally on the CPU, ``full-window`` forces a window per row.
    keep_rows, rows_sink : ``rows_sink(manifest)`` is called once the artifact is loaded; the
        function it returns is :func:`run_backtest`'s ``on_rows`` (e.g. ``lambda m:
        StreamingEvaluator(m, ...).add``). With ``keep_rows=False`` no per-row record is kept.

    Returns
    -------
    (result, manifest, registry): the registry holds every instrument the readers met (tick
    sizes for money figures).
    """
    from lobstream.models.artifact import load_model
    from lobstream.replay.readers import DEFAULT_BATCH_ROWS, read_events

    module, manifest = load_model(model_path, device=device)
    registry = Registry() if registry is None else registry
    runner = make_scorer(
        module,
        manifest,
        scorer=scorer,
        device=device,
        batch=batch,
        threads=threads,
        n_instruments=max(1, len(registry)),
    )
    batches = read_events(
        paths, registry, fmt=fmt, batch_rows=batch_rows or DEFAULT_BATCH_ROWS, skip_bad=skip_bad
    )
    result = run_backtest(
        batches,
        runner,
        manifest,
        n_instruments=max(1, len(registry)),
        batch=batch,
        max_rows=max_rows,
        on_progress=on_progress,
        keep_rows=keep_rows,
        on_rows=None if rows_sink is None else rows_sink(manifest),
    )
    return result, manifest, registry


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
    window and a label), ``trading`` (:func:`lobstream.replay.backtest.simulate.trade_stats` at
    ``config.threshold`` plus ``config``, ``sweep`` and ``per_instrument`` stats keyed by
    instrument id) and ``kernel_conditions``.
    """
    from lobstream.models.metrics import classification_report, confusion_matrix

    if not result.rows_kept:
        raise ValueError(
            f"this backtest kept {len(result.meta)} of its {result.n_rows} rows "
            "(keep_rows=False): score it with lobstream.replay.backtest.evaluator.StreamingEvaluator, "
            "or run it with keep_rows=True"
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
    """The JSON-ready summary both scoring paths return (see :func:`evaluate`).

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


def trading_config_for(manifest: dict, **overrides) -> TradingConfig:
    """A :class:`TradingConfig` whose holding horizon is the artifact's label horizon."""
    label = label_def_from_manifest(manifest)
    base = {"horizon": label.horizon, "horizon_unit": label.unit}
    return TradingConfig(**{**base, **{k: v for k, v in overrides.items() if v is not None}})
