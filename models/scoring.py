"""The scoring runtime shared by the daemon and the backtest: feature rows -> probabilities.

Two ways to score, one choice between them (:func:`choose_scorer`):

- whole windows: a :class:`~lobstream.models.runner.WindowRunner` (torch or a compiled kernel,
  :func:`~lobstream.models.runner.window_runner`) gets ``B`` windows copied into its input
  buffer by the one window copy (:mod:`lobstream.kernels.windows`): from the ring in the
  daemon (``kernels.ring.gather_windows``), from each instrument's rows in the backtest
  (:class:`WindowScorer`).
- incrementally, for a causal artifact on the CPU: an :class:`~lobstream.models.causal.runner.
  IncrementalRunner` keeps one slot per instrument and a row costs one column of convolutions
  plus the head. :class:`IncrementalFeed` is its one driver: the daemon takes a call of the
  rows the ring gained since each instrument's last signal (:meth:`IncrementalFeed.take`), the
  backtest pushes every row in arrival order (:class:`CausalScorer`, on
  :meth:`IncrementalFeed.push`). Same probabilities as the whole window (float32 round-off),
  same NaN rows.

A :class:`Scorer` (``score(rows, meta)``) is what the backtest runs; :func:`make_scorer` builds
the one of a loaded artifact and ``scorer="full-window"`` forces whole windows for comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lobstream.kernels.windows import copy_windows
from lobstream.models.manifest import spec_from_manifest

if TYPE_CHECKING:
    from lobstream.kernels.ring import RingState
    from lobstream.models.causal.runner import IncrementalRunner
    from lobstream.models.runner import WindowRunner

__all__ = [
    "SCORERS",
    "CausalScorer",
    "IncrementalCall",
    "IncrementalFeed",
    "Scorer",
    "WindowScorer",
    "choose_scorer",
    "has_window",
    "incremental_feed",
    "make_scorer",
    "scorer_for",
]

# what make_scorer / backtest_files / ``lobstream backtest --scorer`` accept
SCORERS = ("auto", "incremental", "full-window")


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


# ---- whole windows -----------------------------------------------------------------------


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
        # window j is stacked[j : j + T], copied straight into the runner's buffer
        out = np.empty((n_win, *self.out_shape), np.float32)
        buf = self.runner.input
        b = self.batch
        for s in range(0, n_win, b):
            n = min(b, n_win - s)
            copy_windows(stacked, np.arange(s, s + n), buf)
            out[s : s + n] = self.runner.infer(n)
        self.n_windows += n_win
        return out


# ---- incremental -------------------------------------------------------------------------


class IncrementalCall:
    """One selection's rows for an incremental runner; ``infer(n)`` as ``ModelRunner.infer``.

    Built by :meth:`IncrementalFeed.take` under the daemon's lock (the rows are copies), run
    wherever the batch runs (the loop or the inference thread), after every earlier call of
    the same feed: each slot's rows must reach the runner in arrival order.
    """

    __slots__ = ("feed", "slots", "rows", "want", "lapped")

    def __init__(self, feed, slots, rows, want, lapped) -> None:
        self.feed = feed
        self.slots = slots  # (K,) int64: instrument of each row, in arrival order per instrument
        self.rows = rows  # (K, F) float32
        self.want = want  # (K,) bool: the newest row of each selected instrument
        self.lapped = lapped  # instruments whose slot restarts from the ring's window

    def infer(self, n: int) -> np.ndarray:
        """Probabilities (n, 3) of the selected instruments' newest windows, in selection order."""
        if len(self.lapped):
            # not for the numbers (the window's T rows overwrite every cache of the slot) but
            # so that the slot's count is again the rows it holds in a row
            self.feed.reset(self.lapped)
        out = self.feed.push(self.slots, self.rows, self.want)[self.want]
        if len(out) != n:
            raise ValueError(f"incremental call holds {len(out)} windows, asked for {n}")
        return out


class IncrementalFeed:
    """The one driver of :class:`~lobstream.models.causal.runner.IncrementalRunner`: slot
    ``i`` is instrument ``i``, and every row reaches its slot once, in arrival order.

    :meth:`push` gives rows to their slots (the backtest pushes every row, :class:`CausalScorer`);
    :meth:`take` is the daemon's: which ring rows the runner has not been given yet, and the
    call that gives them.

    ``pushed[i]`` is the ring count up to which slot ``i`` holds instrument ``i``'s rows. A
    selected instrument's rows ``pushed[i] .. count[i]`` are pushed, the newest with the head
    (its signal), the others without (they only move the caches). Rows are taken from the
    ring lazily, at selection, so a row that no signal needs costs nothing until the next
    signal of its instrument, and an instrument that gained more than ``T`` rows since (the
    ring has lapped them; or a runner new after a reload, ``pushed`` = 0) restarts its slot
    from the ring's whole window: the window's probabilities depend on its ``T`` rows alone,
    so the result is the same as if every row had been pushed.

    Parameters
    ----------
    runner : the incremental runner (slots ``0 .. n_slots - 1``); never resized in place.
    n_instruments : instruments the feed serves from the start (default: the runner's slots).
    grow : ``grow(n)`` builds another runner of ``n`` slots of the same model, for instrument
        ids beyond the slots so far (readers register instruments as they meet them). Without
        it an id beyond the slots is refused.
    """

    def __init__(
        self,
        runner: IncrementalRunner,
        n_instruments: int | None = None,
        grow: Callable[[int], IncrementalRunner] | None = None,
    ) -> None:
        n = runner.n_slots if n_instruments is None else int(n_instruments)
        if runner.n_slots < n:
            raise ValueError(f"incremental runner has {runner.n_slots} slots for {n} instruments")
        self.runner = runner  # the first block: slots 0 .. runner.n_slots - 1
        # (first instrument id, runner) per block of slots
        self._blocks: list[tuple[int, Any]] = [(0, runner)]
        self._capacity = int(runner.n_slots)
        self._grow = grow
        self.T = int(runner.T)
        self.F = int(runner.F)
        self.out_shape = tuple(getattr(runner, "out_shape", (3,)))
        self.pushed = np.zeros(n, np.int64)
        # counts for the heartbeat, in an array so that the daemon's fused quiet call
        # (models.quiet) keeps them too: rows pushed; rows skipped (older than the window at a
        # restart: no signal can need them); restarts
        self.stats = np.zeros(3, np.int64)

    @property
    def rows_pushed(self) -> int:
        return int(self.stats[0])

    @property
    def rows_skipped(self) -> int:
        return int(self.stats[1])

    @property
    def restarts(self) -> int:
        return int(self.stats[2])

    @property
    def n_slots(self) -> int:
        """Slots over every block (instrument ids ``0 .. n_slots - 1``)."""
        return self._capacity

    def ensure(self, top: int) -> None:
        """Slots for instrument ids up to ``top``: grows by whole runners, or raises
        ValueError where the feed cannot grow."""
        while top >= self._capacity:
            if self._grow is None:
                raise ValueError(
                    f"instrument id {top} is beyond the incremental runner's "
                    f"{self._capacity} slots: build it with n_slots > {top}"
                )
            n = max(self._capacity, top + 1 - self._capacity)  # doubling: few blocks
            self._blocks.append((self._capacity, self._grow(n)))
            self._capacity += n
        if len(self.pushed) < self._capacity:  # take() may then ask for the new ids too
            grown = np.zeros(self._capacity, np.int64)
            grown[: len(self.pushed)] = self.pushed
            self.pushed = grown

    def push(
        self, slots: np.ndarray, rows: np.ndarray, want: np.ndarray | None = None
    ) -> np.ndarray:
        """``IncrementalRunner.push`` over the blocks: rows (K, F) float32 to slots (K,) int64,
        each slot's in order (slots below :attr:`n_slots`, see :meth:`ensure`); ``want`` (K,)
        bool (None: every row) says which get the head.

        Returns (K, 3) float32 ((K, H, 3) for H heads), NaN where a row is not wanted or its
        window is not full; a new array."""
        if len(self._blocks) == 1:
            return self.runner.push(slots, rows, want)
        probs = np.full((len(slots), *self.out_shape), np.nan, np.float32)
        for base, runner in self._blocks:
            sel = np.flatnonzero((slots >= base) & (slots < base + runner.n_slots))
            if len(sel):
                w = None if want is None else want[sel]
                probs[sel] = runner.push(slots[sel] - base, rows[sel], w)
        return probs

    def reset(self, ids: np.ndarray) -> None:
        """Forget the rows of slots ``ids`` (see ``IncrementalRunner.reset``)."""
        if len(self._blocks) == 1:
            self.runner.reset(ids)
            return
        for base, runner in self._blocks:
            sel = ids[(ids >= base) & (ids < base + runner.n_slots)]
            if len(sel):
                runner.reset(sel - base)

    def keep_warm(self) -> None:
        """A throwaway push on the runner's own state (see ``IncrementalRunner.keep_warm``)."""
        self.runner.keep_warm()

    def take(self, ring: RingState, ids: np.ndarray) -> IncrementalCall:
        """The call for the selected ``ids`` (due: ``count >= T``); marks their rows pushed.

        Parameters
        ----------
        ring : lobstream.kernels.ring.RingState
            Read only; the caller holds the lock that keeps the row kernel off it.
        ids : ndarray (B,) int64
            Distinct instrument ids, each with at least one row since its last call.
        """
        t = self.T
        count = ring.count[ids]
        new = count - self.pushed[ids]
        k = np.minimum(new, t)
        ends = np.cumsum(k)
        total = int(ends[-1]) if len(ends) else 0
        # the last k rows of instrument i are the tail of its window, rows[i, s : s + T]
        first = np.repeat(ring.slot[ids] + t - k - (ends - k), k)
        pos = first + np.arange(total)
        slots = np.repeat(ids, k)
        want = np.zeros(total, np.bool_)
        want[ends - 1] = True
        lapped = ids[new > t]
        self.pushed[ids] = count
        self.stats[0] += total
        self.stats[1] += int((new - k).sum())
        self.stats[2] += len(lapped)
        return IncrementalCall(self, slots, ring.rows[slots, pos], want, lapped)


def incremental_feed(
    module, manifest: dict, n_instruments: int, *, growable: bool = False
) -> IncrementalFeed:
    """The :class:`IncrementalFeed` of a loaded causal artifact: ``n_instruments`` slots (at
    least one), more as instrument ids beyond them appear when ``growable``."""
    from lobstream.models.causal.runner import IncrementalRunner

    def build(n: int) -> IncrementalRunner:
        return IncrementalRunner(module, manifest, n_slots=n)

    return IncrementalFeed(build(max(1, n_instruments)), n_instruments, build if growable else None)


class CausalScorer:
    """:class:`WindowScorer`'s ``score`` for a causal model, by incremental inference.

    Instrument ``i`` is slot ``i`` of the feed's runner; each chunk's rows are pushed in
    arrival order (:meth:`IncrementalFeed.push`). The runner's state plays the part of
    WindowScorer's ``T - 1`` carried rows, and like that carry it is never reset:
    WindowScorer's windows run across snapshots and gaps, so these must too for the
    probabilities to be the same. A row with fewer than ``T - 1`` rows of its instrument before
    it is NaN in both.

    Parameters
    ----------
    feed : the :class:`IncrementalFeed` to push to (:func:`incremental_feed`), or a bare
        incremental runner (slots ``0 .. n_slots - 1``), fed with ``grow`` as
        :class:`IncrementalFeed` takes it.
    """

    name = "incremental"

    def __init__(
        self,
        feed: IncrementalFeed | IncrementalRunner,
        grow: Callable[[int], IncrementalRunner] | None = None,
    ) -> None:
        self.feed = feed if isinstance(feed, IncrementalFeed) else IncrementalFeed(feed, grow=grow)
        self.T = self.feed.T
        self.F = self.feed.F
        self.out_shape = self.feed.out_shape
        self.n_windows = 0

    def score(self, rows: np.ndarray, meta: np.ndarray) -> np.ndarray:
        """Probabilities of every row's window; see :meth:`WindowScorer.score`."""
        m = len(meta)
        if m == 0:
            return np.full((0, *self.out_shape), np.nan, np.float32)
        if rows.shape[1] != self.F:
            raise ValueError(f"rows have {rows.shape[1]} features; the model takes {self.F}")
        inst = meta["instrument"].astype(np.int64)
        self.feed.ensure(int(inst.max()))
        probs = self.feed.push(inst, rows[:m])
        self.n_windows += int(np.count_nonzero(has_window(probs)))
        return probs


# ---- the choice --------------------------------------------------------------------------


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
    from lobstream.models.causal.runner import is_causal

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
    (:func:`lobstream.models.runner.window_runner`: "auto", "torch" or "numba")."""
    T = int(manifest["T"])
    F = spec_from_manifest(manifest).n_features
    if choose_scorer(manifest, scorer, device) == "incremental":
        feed = incremental_feed(module, manifest, n_instruments, growable=True)
        if feed.F != F:
            raise ValueError(f"the model takes F={feed.F} features; the manifest's spec {F}")
        return CausalScorer(feed)
    from lobstream.models.runner import window_runner

    runner: WindowRunner = window_runner(
        module, manifest, runner=runner_kind, device=device, max_batch=batch, threads=threads
    )
    return WindowScorer(runner, T, F, batch)
