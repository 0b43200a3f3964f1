"""Feature rows: the top ``L`` levels of a book as one normalised float32 row.

Row layout (DESIGN.md contract 2, LOBSTER/DeepLOB order), ``F = 4 * L``::

    ask px 1, ask sz 1, bid px 1, bid sz 1, ask px 2, ask sz 2, bid px 2, bid sz 2, ...

Normalisations (:class:`FeatureSpec`, ``params`` is 4 float64):

- ``FEATURE_ZSCORE``: ``(px_ticks - params[0]) / params[1]``, ``(size - params[2]) / params[3]``
- ``FEATURE_TICKS_FROM_MID``: ``(px_ticks - mid) / params[0]``, ``log1p(size)``
- ``FEATURE_RAW``: prices in ticks, sizes as they are

Missing levels: when a side has fewer than ``L`` levels, missing level ``k`` takes the price
of level ``k - 1`` moved one tick away from the touch (ask +1, bid -1) and size 0, and is then
normalised like any level. So a row never holds NaN and prices stay monotone. A row is written
only when both sides have at least one level (else ``CODE_EMPTY_BOOK``).

Arithmetic is float64, rounded once to float32 on store. A row is computed in one place, the
loop of :mod:`lobstream.kernels._loop`, which both the ring kernel
(:func:`lobstream.kernels.ring.apply_events_rows`) and the flat offline kernel
(:func:`events_to_rows`) run, so live and offline rows are identical.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from lobstream.kernels._loop import MODE_FLAT, _run
from lobstream.kernels.book import BookState, check_events, check_report
from lobstream.kernels.dtypes import (
    DEFAULT_LEVELS,
    FEATURE_KIND_NAMES,
    FEATURE_RAW,
    FEATURE_TICKS_FROM_MID,
    FEATURE_ZSCORE,
    ROW_META_DTYPE,
)


class FeatureSpec(NamedTuple):
    """How a feature row is computed: kind (``FEATURE_*``), levels per side, 4 parameters."""

    kind: int
    levels: int
    params: np.ndarray

    @property
    def n_features(self) -> int:
        return 4 * self.levels

    def validate(self) -> FeatureSpec:
        """Return a normalised copy (params as float64 (4,)) or raise naming the bad field."""
        if self.kind not in (FEATURE_ZSCORE, FEATURE_TICKS_FROM_MID, FEATURE_RAW):
            raise ValueError(
                f"feature kind {self.kind} unknown; expected one of "
                f"{dict(enumerate(FEATURE_KIND_NAMES))}"
            )
        if not 1 <= int(self.levels) <= 1000:
            raise ValueError(f"levels must be in 1..1000, got {self.levels}")
        p = np.asarray(self.params, np.float64).reshape(-1)
        if p.shape != (4,) or not np.all(np.isfinite(p)):
            raise ValueError(f"params must be 4 finite numbers, got {self.params!r}")
        if self.kind == FEATURE_ZSCORE and (p[1] <= 0 or p[3] <= 0):
            raise ValueError(
                f"zscore stds must be > 0, got price_std={p[1]}, size_std={p[3]}; "
                "estimate them from training data"
            )
        if self.kind == FEATURE_TICKS_FROM_MID and p[0] <= 0:
            raise ValueError(f"ticks_from_mid price_scale must be > 0, got {p[0]}")
        return FeatureSpec(int(self.kind), int(self.levels), np.ascontiguousarray(p))

    def to_dict(self) -> dict:
        """JSON-friendly form, for model manifests."""
        return {
            "kind": FEATURE_KIND_NAMES[self.kind],
            "levels": int(self.levels),
            "params": [float(x) for x in self.params],
        }

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSpec:
        kind = d["kind"]
        if isinstance(kind, str):
            if kind not in FEATURE_KIND_NAMES:
                raise ValueError(f"feature kind {kind!r} unknown; expected {FEATURE_KIND_NAMES}")
            kind = FEATURE_KIND_NAMES.index(kind)
        return cls(int(kind), int(d["levels"]), np.asarray(d["params"], np.float64)).validate()


def zscore_spec(
    price_mean: float,
    price_std: float,
    size_mean: float,
    size_std: float,
    levels: int = DEFAULT_LEVELS,
) -> FeatureSpec:
    """A z-score spec (DeepLOB style) with stored means and stds (prices in ticks)."""
    p = np.array([price_mean, price_std, size_mean, size_std], np.float64)
    return FeatureSpec(FEATURE_ZSCORE, levels, p).validate()


def ticks_from_mid_spec(price_scale: float = 1.0, levels: int = DEFAULT_LEVELS) -> FeatureSpec:
    """Prices as ticks from mid divided by ``price_scale``, sizes as ``log1p``."""
    return FeatureSpec(
        FEATURE_TICKS_FROM_MID, levels, np.array([price_scale, 1, 0, 1.0])
    ).validate()


def raw_spec(levels: int = DEFAULT_LEVELS) -> FeatureSpec:
    """Prices in ticks and sizes unchanged."""
    return FeatureSpec(FEATURE_RAW, levels, np.array([0.0, 1.0, 0.0, 1.0])).validate()


def _spec_args(spec: FeatureSpec, book: BookState) -> tuple[int, int, float, float, float, float]:
    """Kernel scalars: kind, levels, and the 4 params as offset/scale pairs (1/std
    precomputed: a multiply per value instead of a divide)."""
    p = np.asarray(spec.params, np.float64).reshape(-1)
    if p.shape != (4,):
        spec.validate()  # raises, naming the problem
    args = _kernel_scalars(int(spec.kind), int(spec.levels), *p.tolist())
    if args[1] > book.cached_levels:
        raise ValueError(
            f"the feature spec needs {args[1]} levels but the book caches only "
            f"{book.cached_levels}; make the book with new_book(..., levels={args[1]})"
        )
    return args


# The daemon calls the row kernel once per round with the same spec: validating it every time
# cost about half of a one-event call, so the checked scalars are remembered.
@functools.lru_cache(maxsize=64)
def _kernel_scalars(
    kind: int, levels: int, p0: float, p1: float, p2: float, p3: float
) -> tuple[int, int, float, float, float, float]:
    FeatureSpec(kind, levels, np.array([p0, p1, p2, p3])).validate()
    if kind == FEATURE_ZSCORE:
        return kind, levels, p0, 1.0 / p1, p2, 1.0 / p3
    if kind == FEATURE_TICKS_FROM_MID:
        return kind, levels, 0.0, 1.0 / p0, 0.0, 1.0
    return kind, levels, 0.0, 1.0, 0.0, 1.0


def events_to_rows(
    book: BookState,
    spec: FeatureSpec,
    events: np.ndarray,
    rows_out: np.ndarray,
    meta_out: np.ndarray,
    report: np.ndarray,
) -> int:
    """Apply events and write a feature row, flat, after every consistent LAST event.

    Parameters
    ----------
    book : BookState
        Modified in place.
    spec : FeatureSpec
        Normalisation; ``rows_out`` must have ``F = 4 * spec.levels`` columns.
    events : ndarray (n,) EVENT_DTYPE
    rows_out : ndarray (M, F) float32, C-contiguous
        Rows written in order into ``rows_out[:m]``.
    meta_out : ndarray (M,) ROW_META_DTYPE
        What is known of each row, written into ``meta_out[:m]``.
    report : ndarray (2, N_CODES) int64
        Accumulated in place.

    Returns
    -------
    int
        ``m``, the number of rows written. When ``rows_out`` fills up, processing stops right
        after the event that completed the last row: resume with
        ``events[meta_out["event_index"][m - 1] + 1:]``. ``M = len(events)`` always suffices.
    """
    events = check_events(events)
    check_report(report)
    kind, nlev, a0, a1, a2, a3 = _spec_args(spec, book)
    f = 4 * nlev
    if rows_out.dtype != np.float32 or rows_out.ndim != 2 or rows_out.shape[1] != f:
        raise ValueError(
            f"rows_out must be float32 of shape (M, {f}) for {nlev} levels, got "
            f"{rows_out.dtype} {rows_out.shape}"
        )
    if not rows_out.flags.c_contiguous:
        raise ValueError("rows_out must be C-contiguous")
    if (
        meta_out.dtype != ROW_META_DTYPE
        or meta_out.shape != (rows_out.shape[0],)
        or not meta_out.flags.c_contiguous
    ):
        raise ValueError(
            f"meta_out must be C-contiguous ROW_META_DTYPE of shape ({rows_out.shape[0]},), got "
            f"{meta_out.dtype} {meta_out.shape}"
        )
    unused = np.zeros(1, np.int64)  # the ring's count, slot and first: flat mode has none
    return int(
        _run(
            *book,
            events,
            report,
            MODE_FLAT,
            rows_out[None],
            unused,
            meta_out,
            unused,
            unused,
            kind,
            nlev,
            a0,
            a1,
            a2,
            a3,
        )
    )


def __getattr__(name: str):
    # The ring half of the "feature rows and ring buffers" contract lives in ring.py; importing
    # it from here too is allowed (lazily: ring imports this module).
    if name in ("RingState", "new_ring", "window_view", "apply_events_rows", "gather_windows"):
        from lobstream.kernels import ring

        return getattr(ring, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
