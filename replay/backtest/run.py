"""In-process backtest: files -> events -> feature rows -> windows -> model -> probabilities.

The same kernels as the daemon (:func:`lobstream.kernels.features.events_to_rows` shares its
row arithmetic with the daemon's ring writer), the same scoring runtime
(:mod:`lobstream.models.scoring`), the artifact's own feature spec and label definition.
Windows are never materialised: per instrument, the last ``T - 1`` rows of the previous chunk
are kept, the new rows appended, and each window ``rows[j : j + T]`` is copied straight into
the runner's preallocated input buffer, ``B`` windows per model call
(:class:`~lobstream.models.scoring.WindowScorer`).

A causal artifact (``manifest["causal"]``, e.g. ``cnn_causal``, ``deeplob_causal``) is scored
incrementally instead (:class:`~lobstream.models.scoring.CausalScorer`): one slot of an
:class:`~lobstream.models.causal.runner.IncrementalRunner` per instrument, every row pushed
once in arrival order, so a row costs one column of convolutions plus the head rather than a
whole window. Same probabilities as the full window (float32 round-off), same NaN rows;
:func:`~lobstream.models.scoring.make_scorer` picks the scorer and ``scorer="full-window"``
forces the old path for comparison.

Memory: the chunk buffers are fixed (``batch_rows`` events of rows at a time) and the window
carry is ``T - 1`` rows per instrument. The scored rows stream out, chunk by chunk, to an
``on_rows`` sink and are not kept: :func:`lobstream.replay.backtest.evaluator.stream_backtest`
(what ``lobstream backtest`` runs) gives them to a
:class:`~lobstream.replay.backtest.evaluator.StreamingEvaluator`, which labels rows with a
lookahead of one label horizon per instrument, adds them to the confusion matrix, calibration
bins and signal counts, and simulates the trading at every threshold with a few integers of
state per (threshold, instrument). Memory is O(instruments x (T + label horizon)) plus the
completed trades (80 bytes each); it does not grow with the number of rows (``python -m
bench.backtest_memory`` measures it). Never the ``T x F`` windows (16 kB each).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lobstream.kernels.book import BookState, new_book, new_report
from lobstream.kernels.dtypes import CODE_NAMES, ROW_META_DTYPE
from lobstream.kernels.features import FeatureSpec, events_to_rows
from lobstream.kernels.labels import LABEL_NONE, mid_labels
from lobstream.kernels.registry import Registry
from lobstream.models.manifest import LabelDef, spec_from_manifest
from lobstream.models.scoring import Scorer, make_scorer, scorer_for

logger = logging.getLogger(__name__)

# progress(events_done, rows_done, windows_done)
ProgressFn = Callable[[int, int, int], None]
# rows(meta (m,) ROW_META_DTYPE, probs (m, 3) f4, (m, H, 3) for H heads) of each scored chunk
RowsFn = Callable[[np.ndarray, np.ndarray], None]


@dataclass
class BacktestResult:
    """What a backtest run counted (its rows went to the ``on_rows`` sink).

    Attributes
    ----------
    n_events : events read. n_windows : rows that got probabilities (a full window).
    seconds : wall time of the run. report : kernel conditions by name (non-zero counts).
    n_rows : feature rows scored. scorer : :attr:`Scorer.name` of the scorer that ran.
    """

    n_events: int
    n_windows: int
    seconds: float
    report: dict = field(default_factory=dict)
    n_rows: int = 0
    scorer: str = "full-window"


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
    on_rows: RowsFn | None = None,
    n_instruments: int = 1,
    batch: int | None = None,
    max_rows: int | None = None,
    on_progress: ProgressFn | None = None,
) -> BacktestResult:
    """Score every window of an event stream and stream the scored rows to ``on_rows``.

    Parameters
    ----------
    batches : iterable of (n,) EVENT_DTYPE arrays, e.g. :func:`lobstream.replay.readers.
        read_events`.
    runner : a :class:`lobstream.models.runner.ModelRunner` of the artifact (full windows),
        an :class:`lobstream.models.causal.runner.IncrementalRunner` (causal artifacts, with a
        slot per instrument id), or a ready :class:`~lobstream.models.scoring.Scorer`
        (:func:`~lobstream.models.scoring.make_scorer`).
    manifest : the artifact's manifest (feature spec, T).
    on_rows : called with ``(meta (m,) ROW_META_DTYPE, probs (m, 3) float32)`` of each chunk
        of scored rows, in arrival order (``event_index`` counted from the start of the
        stream). The arrays are the callee's to keep; e.g.
        :meth:`lobstream.replay.backtest.evaluator.StreamingEvaluator.add`. None: the rows
        are only counted (throughput measurements).
    n_instruments : instruments expected (the book grows if more appear).
    batch : windows per model call (default: the runner's buffer size).
    max_rows : stop after this many feature rows (for benchmarks and quick looks).
    on_progress : called after each event batch with (events, rows, windows) so far.
    """
    spec = spec_from_manifest(manifest)
    scorer = scorer_for(runner, int(manifest["T"]), spec.n_features, batch)
    report = new_report()
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
        n_events += n
        n_rows += len(meta)
        # this chunk is the sink's now: not alive while the next is scored
        del rows, meta, p
        if on_progress is not None:
            on_progress(n_events, n_rows, scorer.n_windows)
        if max_rows is not None and n_rows >= max_rows:
            break
    seconds = time.perf_counter() - t0
    counts = {CODE_NAMES[c]: int(report[0, c]) for c in range(len(CODE_NAMES)) if report[0, c]}
    if counts:
        logger.info("kernel conditions during the backtest: %s", counts)
    return BacktestResult(n_events, scorer.n_windows, seconds, counts, n_rows, scorer.name)


class BacktestInput(NamedTuple):
    """A loaded artifact and its event stream, ready for :func:`run_backtest` or
    :func:`lobstream.replay.backtest.evaluator.stream_backtest`."""

    batches: Iterator[np.ndarray]  # event batches of the files, read lazily
    scorer: Scorer
    manifest: dict
    registry: Registry  # fills with every instrument the readers meet (tick sizes)
    n_instruments: int  # instruments known before reading (state grows past it)


def open_backtest(
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
    scorer: str = "auto",
) -> BacktestInput:
    """Load the artifact and its scorer (:func:`~lobstream.models.scoring.make_scorer`;
    ``scorer`` one of :data:`lobstream.models.scoring.SCORERS`) and open the files as one
    stream of event batches."""
    from lobstream.models.artifact import load_model
    from lobstream.replay.readers import DEFAULT_BATCH_ROWS, read_events

    module, manifest = load_model(model_path, device=device)
    registry = Registry() if registry is None else registry
    n_instruments = max(1, len(registry))
    runner = make_scorer(
        module,
        manifest,
        scorer=scorer,
        device=device,
        batch=batch,
        threads=threads,
        n_instruments=n_instruments,
    )
    batches = read_events(
        paths, registry, fmt=fmt, batch_rows=batch_rows or DEFAULT_BATCH_ROWS, skip_bad=skip_bad
    )
    return BacktestInput(batches, runner, manifest, registry, n_instruments)


def backtest_files(
    paths: Iterable[str | Path],
    model_path: str | Path,
    rows_sink: Callable[[dict], RowsFn],
    *,
    batch: int = 256,
    max_rows: int | None = None,
    on_progress: ProgressFn | None = None,
    **open_kw: Any,
) -> tuple[BacktestResult, dict, Registry]:
    """:func:`open_backtest` then :func:`run_backtest`, for callers whose sink depends on
    the manifest: ``rows_sink(manifest)`` is called once the artifact is loaded and returns
    the ``on_rows`` of the run (e.g. ``lambda m: evaluator_for(m, ...).add``).

    ``open_kw``: ``registry``, ``fmt``, ``device``, ``threads``, ``batch_rows``, ``skip_bad``,
    ``scorer`` of :func:`open_backtest`.

    Returns
    -------
    (result, manifest, registry): the registry holds every instrument the readers met (tick
    sizes for money figures).
    """
    src = open_backtest(paths, model_path, batch=batch, **open_kw)
    result = run_backtest(
        src.batches,
        src.scorer,
        src.manifest,
        on_rows=rows_sink(src.manifest),
        n_instruments=src.n_instruments,
        batch=batch,
        max_rows=max_rows,
        on_progress=on_progress,
    )
    return result, src.manifest, src.registry
