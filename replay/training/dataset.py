"""Training data: files -> events -> feature rows -> windows and labels, split in time.

The rows come from :func:`lobstream.kernels.features.events_to_rows` with a
:class:`~lobstream.kernels.features.FeatureSpec`, the same kernel and feature code the daemon
runs, so a model learns exactly what it will see live. Steps:

1. Each file is read whole (``read_events``) and turned into RAW rows (prices in ticks, sizes as
   they are) with a fresh book per file. A *stream* is the rows of one instrument in one file;
   streams are stored one after the other in one flat (M, F) array, and no window crosses a
   stream boundary (nor a night between two files).
2. Chronological split: cut times at the ``fractions`` quantiles of all rows' ``ts_event``, so
   every stream is cut at the same instants. Between two parts of a stream, ``gap`` rows belong
   to neither: ``T + k`` rows for a horizon of ``k`` events, and for a horizon of ``h`` seconds
   ``T`` rows more than those within ``h`` of the cut. Labels are computed on each part's own
   rows, so a label never looks into another part, and a window's rows lie inside its part.
3. Labels (:mod:`lobstream.kernels.labels`, the kind of :class:`LabelDef`): alpha given, or
   chosen on the training part only (balanced classes; for kind ``"spread"`` the training rows'
   mean relative spread).
4. Normalisation statistics (z-score) from the training part's RAW rows only: prices (ticks)
   and sizes over the top ``L`` levels of both sides; then the events are run again through
   ``events_to_rows`` with the resulting spec to build the normalised rows.

Windows are never materialised: :class:`lobstream.models.train.Windows` holds the flat rows and
the index of each window's last row, and gathers batches by index.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lobstream.kernels.book import new_book, new_report
from lobstream.kernels.dtypes import CODE_NAMES, FEATURE_ZSCORE, N_CODES, ROW_META_DTYPE
from lobstream.kernels.features import (
    FeatureSpec,
    events_to_rows,
    raw_spec,
    ticks_from_mid_spec,
    zscore_spec,
)
from lobstream.kernels.labels import (
    LABEL_DEFINITIONS,
    balanced_alpha,
    classify_change,
    label_change,
    spread_alpha,
)
from lobstream.kernels.registry import Registry
from lobstream.models.manifest import LabelDef
from lobstream.models.train import Windows
from lobstream.replay.readers import read_events

logger = logging.getLogger(__name__)

PARTS = ("train", "val", "test")
# Conditions that mean the input does not describe a valid book; the others are routine.
_SERIOUS = ("crossed", "seq_gap", "bad_event", "bad_instrument", "time_backwards")


@dataclass
class Stream:
    """Rows ``start .. stop - 1`` of the flat arrays: one instrument of one file."""

    file: str
    instrument: int
    start: int
    stop: int
    parts: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> [a, b) rows


@dataclass
class LobDataset:
    """Normalised rows, RAW rows, meta, and the three parts' windows and labels."""

    rows: np.ndarray  # (M, F) float32, normalised by ``spec``
    raw: np.ndarray  # (M, F) float32, FEATURE_RAW
    meta: np.ndarray  # (M,) ROW_META_DTYPE
    spec: FeatureSpec
    window: int
    levels: int
    label: LabelDef  # the primary (first) head's
    alpha: float
    streams: list[Stream]
    parts: dict[str, Windows]
    files: list[str]
    n_events: int
    report: np.ndarray  # (2, N_CODES) summed over files, first pass
    # every head's definition and threshold (one entry for a single-head dataset); the parts'
    # labels are then (N, H), a window kept only where every head has a label
    heads: list[LabelDef] = field(default_factory=list)
    alphas: list[float] = field(default_factory=list)
    split_scope: str = "common"  # cut instants common to every stream, or per instrument
    symbols: dict[int, str] = field(default_factory=dict)  # instrument id -> symbol, if known

    def __post_init__(self) -> None:
        if not self.heads:
            self.heads, self.alphas = [self.label], [self.alpha]

    @property
    def n_heads(self) -> int:
        return len(self.heads)

    def class_balance(self, head: int = 0) -> dict[str, list[float]]:
        """Fraction of down / flat / up labels of ``head`` in each part."""
        out = {}
        for name, w in self.parts.items():
            y = w.labels if w.labels.ndim == 1 else w.labels[:, head]
            c = np.bincount(y.astype(np.int64), minlength=3).astype(float)
            out[name] = (c / max(c.sum(), 1.0)).round(4).tolist()
        return out

    def label_dict(self, head: int = 0) -> dict:
        """The manifest's ``label`` entry (of ``head``; 0 is the manifest's ``label``)."""
        label, alpha = self.heads[head], self.alphas[head]
        if label.alpha is not None:
            rule = "given"
        elif label.kind == "spread":
            rule = "mean relative spread of train"
        else:
            rule = "balanced on train"
        return {
            "kind": label.kind,
            "horizon": label.horizon,
            "unit": label.unit,
            "alpha": alpha,
            "alpha_rule": rule,
            "smoothing": LABEL_DEFINITIONS[label.kind],
            "classes": ["down", "flat", "up"],
        }

    def trained_on(self) -> dict:
        """The manifest's ``trained_on`` entry."""
        return {
            "files": [Path(f).name for f in self.files],
            "events": self.n_events,
            "rows": int(self.rows.shape[0]),
            "split": (
                "chronological, cut at common ts_event quantiles, gap rows between parts"
                if self.split_scope == "common"
                else "chronological, cut at each instrument's own ts_event quantiles, gap rows "
                "between parts"
            ),
            "split_windows": {k: len(w) for k, w in self.parts.items()},
            "split_rows": {
                k: int(sum(s.parts[k][1] - s.parts[k][0] for s in self.streams)) for k in PARTS
            },
            "class_balance": self.class_balance(),
            "normalisation": "z-score statistics from the training part's rows only",
        }


def _file_events(path: str | Path, registry: Registry, max_events: int | None) -> np.ndarray:
    batches = []
    n = 0
    # a bounded read stops early: batches no bigger than what is wanted
    kw = {} if max_events is None else {"batch_rows": max(int(max_events), 1024)}
    for b in read_events([path], registry, **kw):
        batches.append(b)
        n += len(b)
        if max_events is not None and n >= max_events:
            break
    if not batches:
        raise ValueError(f"{path}: no events read; is it an empty file or the wrong format?")
    ev = np.concatenate(batches)
    return ev[:max_events] if max_events is not None else ev


def _rows(events: np.ndarray, spec: FeatureSpec, n_instruments: int, report: np.ndarray):
    book = new_book(n_instruments)
    rows = np.empty((len(events), spec.n_features), dtype=np.float32)
    meta = np.empty(len(events), dtype=ROW_META_DTYPE)
    m = events_to_rows(book, spec, events, rows, meta, report)
    return rows[:m], meta[:m]


def _log_report(path: str, report: np.ndarray) -> None:
    for c in range(N_CODES):
        if report[0, c]:
            log = logger.warning if CODE_NAMES[c] in _SERIOUS else logger.info
            log("%s: %d x %s (first at event %d)", path, report[0, c], CODE_NAMES[c], report[1, c])


def _gap_end(ts: np.ndarray, b: int, window: int, label: LabelDef) -> int:
    """First row after the gap that follows a cut at row ``b`` of one stream."""
    h, unit = label.kernel_args()
    if unit == "events":
        return b + window + h
    if b >= len(ts):
        return len(ts)
    return int(np.searchsorted(ts, ts[b] + h, side="right")) + window


def _zscore_params(raw: np.ndarray, levels: int) -> np.ndarray:
    px = np.concatenate([raw[:, 0 : 4 * levels : 4], raw[:, 2 : 4 * levels : 4]], axis=1)
    sz = np.concatenate([raw[:, 1 : 4 * levels : 4], raw[:, 3 : 4 * levels : 4]], axis=1)
    px = px.astype(np.float64)
    sz = sz.astype(np.float64)
    p = np.array([px.mean(), px.std(), sz.mean(), sz.std()])
    if not (p[1] > 0 and p[3] > 0):
        raise ValueError(
            f"training rows have constant prices or sizes (std {p[1]}, {p[3]}): cannot "
            "z-score; use more data or --features ticks_from_mid"
        )
    return p


def _alpha(
    label: LabelDef,
    head: int,
    train: list[tuple[np.ndarray, list[np.ndarray]]],
    meta: np.ndarray,
    streams: list[Stream],
    window: int,
) -> float:
    """Head ``head``'s threshold: given, the training rows' mean relative spread (kind
    "spread"), or balanced on its training changes."""
    if label.alpha is not None:
        return float(label.alpha)
    if label.kind == "spread":
        tr = np.concatenate([meta[a:b] for s in streams for a, b in [s.parts["train"]]])
        return spread_alpha(tr["best_bid"], tr["best_ask"])
    train_ch = [c[head] for _, c in train]
    if not train_ch:
        raise ValueError(
            f"the training part has fewer than T={window} rows in every stream; "
            "use more data or a smaller window"
        )
    return balanced_alpha(np.concatenate(train_ch))


def _cuts(
    streams: list[Stream], ts_all: np.ndarray, fractions: tuple[float, float], scope: str
) -> list[tuple[int, int]]:
    """The two cut instants of each stream: the ``fractions`` quantiles of ``ts_event`` over
    every row (scope "common") or over the rows of the stream's instrument ("instrument")."""
    f_train, f_val = fractions
    q = [f_train, f_train + f_val]
    if scope == "common":
        c = tuple(np.quantile(ts_all, q, method="lower"))
        return [c] * len(streams)
    if scope != "instrument":
        raise ValueError(f"split scope must be 'common' or 'instrument', got {scope!r}")
    by_inst: dict[int, tuple] = {}
    for inst in {s.instrument for s in streams}:
        ts = np.concatenate([ts_all[s.start : s.stop] for s in streams if s.instrument == inst])
        by_inst[inst] = tuple(np.quantile(ts, q, method="lower"))
    return [by_inst[s.instrument] for s in streams]


def _split(
    streams: list[Stream],
    ts_all: np.ndarray,
    fractions: tuple[float, float],
    window: int,
    heads: list[LabelDef],
    scope: str = "common",
) -> None:
    """Set each stream's ``parts``: cut at the ``fractions`` quantiles of ``ts_event`` (see
    :func:`_cuts`), with the gap of the longest horizon."""
    for s, (cut1, cut2) in zip(streams, _cuts(streams, ts_all, fractions, scope), strict=True):
        ts = ts_all[s.start : s.stop]
        b1 = int(np.searchsorted(ts, cut1, side="right"))
        b2 = max(int(np.searchsorted(ts, cut2, side="right")), b1)
        # the longest horizon's gap: no head's label looks into the next part
        g1 = min(max(_gap_end(ts, b1, window, lb) for lb in heads), len(ts))
        g2 = min(max(max(_gap_end(ts, b2, window, lb) for lb in heads), g1), len(ts))
        b2 = max(b2, g1)
        s.parts = {
            "train": (s.start, s.start + b1),
            "val": (s.start + g1, s.start + b2),
            "test": (s.start + g2, s.stop),
        }


def _train_raw(raw: np.ndarray, streams: list[Stream]) -> np.ndarray:
    return np.concatenate([raw[a:b] for s in streams for a, b in [s.parts["train"]]])


def _tick_scale(tr: np.ndarray, levels: int) -> float:
    """Mean distance from the mid, in ticks, of the top ``levels`` prices of both sides of
    the training RAW rows ``tr``: divides ``ticks_from_mid`` prices to about unit size (an
    instrument quoted over hundreds of ticks otherwise feeds a network inputs in the hundreds,
    where the log sizes are about 5)."""
    mid = 0.5 * (tr[:, 0].astype(np.float64) + tr[:, 2])
    px = np.concatenate([tr[:, 0 : 4 * levels : 4], tr[:, 2 : 4 * levels : 4]], axis=1)
    scale = float(np.abs(px - mid[:, None]).mean())
    return scale if scale > 0 else 1.0


def _spec(
    features: str,
    raw: np.ndarray,
    streams: list[Stream],
    levels: int,
    tick_scale: float | None = 1.0,
) -> FeatureSpec:
    """The normalisation: z-score statistics from the training part's RAW rows only;
    ``ticks_from_mid`` prices divided by ``tick_scale`` (None: :func:`_tick_scale` of the
    training rows)."""
    if features == "zscore":
        return zscore_spec(*_zscore_params(_train_raw(raw, streams), levels), levels=levels)
    if features == "ticks_from_mid":
        if tick_scale is None:
            tick_scale = _tick_scale(_train_raw(raw, streams), levels)
        return ticks_from_mid_spec(float(tick_scale), levels)
    raise ValueError(f"features must be 'zscore' or 'ticks_from_mid', got {features!r}")


def _normalised_rows(
    paths: list[str],
    events_by_file: list[np.ndarray],
    spec: FeatureSpec,
    n_instruments: int,
    meta: np.ndarray,
    n_rows: int,
) -> np.ndarray:
    """The second pass: each file's events through the row kernel with ``spec``, regrouped by
    instrument as the raw pass was (and checked to be the same rows)."""
    rows = np.empty((n_rows, spec.n_features), np.float32)
    off = 0
    for path, ev in zip(paths, events_by_file, strict=True):
        r, m = _rows(ev, spec, n_instruments, new_report())
        order = np.argsort(m["instrument"], kind="stable")
        if len(r) != len(order) or not np.array_equal(
            m["event_index"][order], meta["event_index"][off : off + len(r)]
        ):
            raise RuntimeError(f"{path}: normalised pass wrote different rows than the raw pass")
        rows[off : off + len(r)] = r[order]
        off += len(r)
    return rows


def build_dataset(
    paths: Sequence[str | Path],
    label: LabelDef | Sequence[LabelDef],
    *,
    window: int = 100,
    levels: int = 10,
    fractions: tuple[float, float] = (0.7, 0.15),
    features: str = "zscore",
    registry: Registry | None = None,
    max_events: int | None = None,
    split_scope: str = "common",
    tick_scale: float | None = 1.0,
) -> LobDataset:
    """Build rows, labels and the train / val / test windows from LOB files.

    Parameters
    ----------
    paths : sequence of path-like
        Files any reader of :mod:`lobstream.replay.readers` accepts (for LOBSTER, the message
        file with its orderbook file beside it).
    label : LabelDef, or one per head (a multi-horizon dataset: labels (N, H), see
        :mod:`lobstream.models.heads`)
    window : int
        T, rows per window.
    levels : int
        L, levels per side; F = 4 L.
    fractions : (float, float)
        Shares of time for train and validation; test takes the rest.
    features : {"zscore", "ticks_from_mid"}
        Normalisation; z-score statistics come from the training part.
    registry : Registry, optional
        Instrument registry (a fresh one is filled by the readers when absent).
    max_events : int, optional
        Read only the first ``max_events`` events of each file (quick runs and tests).
    split_scope : {"common", "instrument"}
        Cut every stream at the same instants (the default: one market, one clock), or each
        instrument at its own time quantiles: for files of different days and venues, where
        common instants would put whole instruments into one part.
    tick_scale : float or None
        ``ticks_from_mid`` only: prices in ticks from the mid are divided by it; None: the mean
        distance from the mid of the training rows' top ``levels`` prices.
    """
    registry = Registry() if registry is None else registry
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("no input files given")
    sources = [(p, _file_events(p, registry, max_events)) for p in paths]
    ds = dataset_from_events(
        sources,
        label,
        window=window,
        levels=levels,
        fractions=fractions,
        features=features,
        n_instruments=len(registry),
        split_scope=split_scope,
        tick_scale=tick_scale,
    )
    ds.symbols = {inst.id: inst.symbol for inst in registry}
    return ds


def dataset_from_events(
    sources: Sequence[tuple[str, np.ndarray]],
    label: LabelDef | Sequence[LabelDef],
    *,
    window: int = 100,
    levels: int = 10,
    fractions: tuple[float, float] = (0.7, 0.15),
    features: str = "zscore",
    n_instruments: int | None = None,
    split_scope: str = "common",
    tick_scale: float | None = 1.0,
) -> LobDataset:
    """:func:`build_dataset` on events already read: ``sources`` is a list of (name, events
    (n,) EVENT_DTYPE), one per file; ``n_instruments`` defaults to the largest id + 1."""

    f_train, f_val = fractions
    if not (0 < f_train < 1 and 0 < f_val < 1 and f_train + f_val < 1):
        raise ValueError(f"fractions must be two shares in (0, 1) summing below 1, got {fractions}")
    if window < 2:
        raise ValueError(f"window T must be at least 2, got {window}")
    if not sources:
        raise ValueError("no input files given")
    paths = [str(name) for name, _ in sources]
    heads = [label] if isinstance(label, LabelDef) else list(label)
    if not heads:
        raise ValueError("no label definition given")
    if n_instruments is None:
        n_instruments = 1 + max(int(ev["instrument"].max()) if len(ev) else 0 for _, ev in sources)

    # 1. RAW rows per file, regrouped into per-instrument streams
    events_by_file, raws, metas, streams = [], [], [], []
    report = new_report()
    n_events, start = 0, 0
    for path, ev in zip(paths, (e for _, e in sources), strict=True):
        n_events += len(ev)
        rep = new_report()
        raw, meta = _rows(ev, raw_spec(levels), n_instruments, rep)
        _log_report(path, rep)
        report[0] += rep[0]
        events_by_file.append(ev)
        order = np.argsort(meta["instrument"], kind="stable")
        raws.append(raw[order])
        metas.append(meta[order])
        for inst in np.unique(meta["instrument"]):
            n = int(np.count_nonzero(meta["instrument"] == inst))
            streams.append(Stream(path, int(inst), start, start + n))
            start += n
        logger.info("%s: %d events -> %d rows", path, len(ev), len(raw))
    raw = np.concatenate(raws)
    meta = np.concatenate(metas)
    if raw.shape[0] == 0:
        raise ValueError(f"{paths}: no feature rows (is the book ever two-sided?)")

    # 2. chronological split at common instants, with gaps
    _split(streams, meta["ts_event"], (f_train, f_val), window, heads, split_scope)

    # 3. labels per part and head; each head's alpha from the training part only
    changes: dict[str, list[tuple[np.ndarray, list[np.ndarray]]]] = {p: [] for p in PARTS}
    for s in streams:
        for p, (a, b) in s.parts.items():
            if b - a < window:
                continue
            chs = []
            for lb in heads:
                k, unit = lb.kernel_args()
                ch = label_change(meta["mid"][a:b], k, meta["ts_event"][a:b], unit, lb.kind)
                chs.append(ch[window - 1 :])
            changes[p].append((np.arange(a + window - 1, b, dtype=np.int64), chs))
    alphas = [_alpha(lb, h, changes["train"], meta, streams, window) for h, lb in enumerate(heads)]

    # 4. z-score statistics from the training rows, then normalised rows from the kernel
    spec = _spec(features, raw, streams, levels, tick_scale)
    rows = _normalised_rows(paths, events_by_file, spec, n_instruments, meta, len(raw))

    parts = {}
    for p in PARTS:
        if changes[p]:
            ends = np.concatenate([e for e, _ in changes[p]])
            lab = np.stack(
                [
                    classify_change(np.concatenate([c[h] for _, c in changes[p]]), alphas[h])
                    for h in range(len(heads))
                ],
                axis=1,
            )
        else:
            ends, lab = np.zeros(0, np.int64), np.zeros((0, len(heads)), np.int8)
        keep = (lab >= 0).all(axis=1)
        lab = lab[keep] if len(heads) > 1 else lab[keep, 0]
        parts[p] = Windows(rows, ends[keep], lab, window)
    ds = LobDataset(
        rows, raw, meta, spec, window, levels, heads[0], alphas[0], streams, parts, paths,
        n_events, report, heads, alphas, split_scope,
    )  # fmt: skip
    logger.info(
        "dataset: %s label, alpha %s, windows %s, balance %s",
        heads[0].kind,
        ", ".join(f"{a:.3g}" for a in alphas),
        {p: len(w) for p, w in parts.items()},
        ds.class_balance(),
    )
    if spec.kind == FEATURE_ZSCORE:
        logger.info("z-score params (train only): %s", spec.params.tolist())
    return ds
