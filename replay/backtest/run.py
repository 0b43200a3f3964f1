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
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from lobstream.kernels.book import BookState, new_book, new_report
from lobstream.kernels.dtypes import CODE_NAMES, ROW_META_DTYPE
from lobstream.kernels.features import FeatureSpec, events_to_rows
from lobstream.kernels.labels import LABEL_NONE, mid_labels
from lobstream.kernels.registry import Registry
from lobstream.models.manifest import LabelDef, spec_from_manifest

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


def has_window(probs: np.ndarray) -> np.ndarray:
    """(n,) bool: rows of probabilities (n, 3) or (n, H, 3) that had a full window (not NaN)."""
    return ~np.isnan(probs.reshape(len(probs), -1)[:, 0])


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
    runner_kind: str = "auto",
) -> Scorer:
    """The scorer of a loaded artifact (see :func:`choose_scorer`): a :class:`CausalScorer`
    with ``n_instruments`` slots to start with (more as instruments appear), or a
    :class:`WindowScorer` over the whole-window runner ``runner_kind`` picks
    (:func:`lobstream.models.compiled.window_runner`: "auto", "torch" or "numba")."""
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
    from lobstream.models.compiled import window_runner

    runner = window_runner(module, manifest, runner=runner_kind, device=device, max_batch=batch,
                           threads=threads)  # fmt: skip
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
        an :class:`lobstream.models.incremental.IncrementalRunner` (causal artifacts, with a
        slot per instrument id), or a ready :class:`Scorer` (:func:`make_scorer`).
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
    """Load the artifact and its scorer (:func:`make_scorer`; ``scorer`` one of
    :data:`SCORERS`) and open the files as one stream of event batches."""
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
