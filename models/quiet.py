"""The daemon's quiet-market path: a round's events to its signal records in one compiled call.

At low load the daemon's latency is not its kernels but the Python and numpy dispatch between
them, each step on caches gone cold since the last message. Where the model runs as a Numba
kernel (the compiled BiN-CTABL, or an incremental causal model on the CPU), a round the loop
infers itself is one call here: apply the events and write the rows, select the due windows as
the scheduler does (:func:`lobstream.kernels.quiet.apply_select`), run the model on them (the
window copy and the compiled forward pass, or the incremental feed's take and push), and write
the signal records. The daemon then only stamps and sends them; under load, when the inference
thread takes the batch, the kernel stops after the book and the daemon hands over as before.

The state is the daemon's own (book, rings, scheduler, feed, records), so the fused call and
the stage-by-stage path can alternate round by round and give the same signals.
:func:`quiet_path` builds the :class:`QuietPath` of a loaded model, or None for one without a
kernel (torch, a GPU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lobstream.kernels._jit import njit
from lobstream.kernels.book import new_book, new_report
from lobstream.kernels.dtypes import EVENT_DTYPE
from lobstream.kernels.features import _spec_args
from lobstream.kernels.quiet import apply_select, fill_signals
from lobstream.kernels.ring import new_ring
from lobstream.kernels.windows import copy_window
from lobstream.kernels.wire import check_messages
from lobstream.models.binctabl.compiled import CompiledRunner
from lobstream.models.binctabl.kernel import binctabl_forward
from lobstream.models.causal.hrnn import HRNNStream
from lobstream.models.causal.hrnn_kernel import push as hrnn_push
from lobstream.models.causal.kernel import HD_T
from lobstream.models.causal.kernel import _push as program_push
from lobstream.models.causal.runner import ProgramStream

if TYPE_CHECKING:
    from lobstream.kernels.book import BookState
    from lobstream.kernels.features import FeatureSpec
    from lobstream.kernels.ring import RingState

__all__ = ["QuietPath", "no_frames", "quiet_path"]

# the streaming HRNN kernel's weight arguments, in its order (models.causal.hrnn_kernel.push)
_HRNN_WEIGHTS = ("w_ih", "w_hh", "b_lstm", "w_sum", "b_sum", "w_conv", "b_conv", "lam", "lam_n",
                 "w1", "b1", "w2", "b2")  # fmt: skip


# ---- kernels: book and selection, the model, the records ----------------------------------


@njit
def _apply(events, big_at, check, book, report, ring, spec, sched):
    """The frame check of the drain (``Ingest.checks``), then book, rows and selection; -2
    when a message fails the check (nothing is applied: the caller drops it and goes on)."""
    if check_messages(events, *check) > 0:
        return -2
    return apply_select(*book, events, report, *ring, *spec, *sched, big_at)


@njit
def _take(i, ring, inc, T):
    """The incremental feed's take for instrument ``i`` (``IncrementalFeed.take``): the rows
    its slot has not been given, at most the window's ``T``; a slot the ring has lapped
    restarts (returns True so the caller resets it). Returns ``(first row, k, restart)``."""
    rows, count, slot = ring[0], ring[1], ring[3]
    pushed, stats = inc[0], inc[1]
    new = count[i] - pushed[i]
    k = min(new, T)
    pushed[i] = count[i]
    stats[0] += k
    stats[1] += new - k
    restart = new > T
    if restart:
        stats[2] += 1
    return rows[i, slot[i] + T - k : slot[i] + T], k, restart


@njit
def _one_head(k, want, slots, i):
    for j in range(k):
        slots[j] = i
        want[j] = j == k - 1


@njit
def quiet_window(events, big_at, check, book, report, ring, spec, sched, sig, probs, x, params,
                 s32, s64):  # fmt: skip
    """Whole windows on the compiled BiN-CTABL (``models.binctabl.compiled``)."""
    nb = _apply(events, big_at, check, book, report, ring, spec, sched)
    if nb <= 0:
        return nb
    ids = sched[4]
    for b in range(nb):
        copy_window(ring[0], ids[b], ring[3][ids[b]], x, b)
    binctabl_forward(x, nb, probs, params, s32, s64)
    fill_signals(sig[0], ids, nb, ring[2], probs, sig[1], sig[2])
    return nb


@njit
def quiet_program(events, big_at, check, book, report, ring, spec, sched, sig, probs, inc, program,
                  state, counts, scratch, slots, want, out):  # fmt: skip
    """Incremental: a conv causal model's compiled program (``models.causal.kernel``)."""
    nb = _apply(events, big_at, check, book, report, ring, spec, sched)
    if nb <= 0:
        return nb
    ids = sched[4]
    T = program[4][HD_T]
    for b in range(nb):
        i = ids[b]
        x, k, restart = _take(i, ring, inc, T)
        if restart:
            state[i, :] = 0.0
            counts[i] = 0
        _one_head(k, want, slots, i)
        program_push(*program, state, counts, slots[:k], x, want[:k], out[:k], scratch)
        probs[b, :] = out[k - 1, :]
    fill_signals(sig[0], ids, nb, ring[2], probs, sig[1], sig[2])
    return nb


@njit
def quiet_hrnn(events, big_at, check, book, report, ring, spec, sched, sig, probs, inc, weights,
               state, counts, scratch, slots, want, out, T):  # fmt: skip
    """Incremental: the streaming HRNN (``models.causal.hrnn_kernel``)."""
    nb = _apply(events, big_at, check, book, report, ring, spec, sched)
    if nb <= 0:
        return nb
    ids = sched[4]
    summaries, feats, h = state
    for b in range(nb):
        i = ids[b]
        x, k, restart = _take(i, ring, inc, T)
        if restart:
            summaries[i] = 0.0
            feats[i] = 0.0
            h[i] = 0.0
            counts[i] = 0
        _one_head(k, want, slots, i)
        hrnn_push(*weights, summaries, feats, h, counts, slots[:k], x, want[:k], out[:k],
                  scratch, T)  # fmt: skip
        probs[b, :] = out[k - 1, :]
    fill_signals(sig[0], ids, nb, ring[2], probs, sig[1], sig[2])
    return nb


# ---- the daemon's handle ---------------------------------------------------------------------


class QuietPath:
    """One compiled call per round, bound to the daemon's state (see the module docstring).

    ``run(events, big_at, check)`` checks the frames (``check``: ``Ingest.checks()``), applies
    ``events`` and, unless ``big_at`` (> 0) windows or more are due, infers the due ones and
    fills ``records[:n]``; returns ``n`` (0: none due; -1: the inference thread's batch,
    nothing selected; -2: a message failed the check, nothing applied). After it, ``ids[:n]``
    are the instruments, ``stale_before`` the stale flags before the events and ``sel``
    (conflated rows, windows left due, the events' largest ts_recv). ``records`` is the
    daemon's buffer (model_id and v2 header fields kept);
    ``last`` and ``cursor`` are the scheduler's.
    """

    def __init__(self, kernel, model_args: tuple, book: BookState, ring: RingState,
                 spec: FeatureSpec, report: np.ndarray, last: np.ndarray, cursor: np.ndarray,
                 records: np.ndarray, n_out: int) -> None:  # fmt: skip
        n = len(book.stale)
        b = len(records)
        self.ids = np.zeros(b, np.int64)
        self.stale_before = np.zeros(n, np.uint8)
        self.sel = np.zeros(3, np.int64)
        self.records = records
        self.probs = np.zeros((b, n_out), np.float32)
        if "head_prob" in records.dtype.names:
            heads = (records["head_prob"], records["head_pred"])
        else:
            heads = (np.zeros((0, 1, 3), np.float32), np.zeros((0, 1), np.uint8))
        sched = (last, cursor, self.stale_before, np.zeros(n, np.int64), self.ids, self.sel)
        self._kernel = kernel
        self._parts = (kernel, model_args, spec, n_out, ring.window)
        # plain tuples: what the dispatcher types fastest
        self._args = (tuple(book), report, tuple(ring), _spec_args(spec, book), sched,
                      (records, *heads), self.probs, *model_args)  # fmt: skip

    def run(self, events: np.ndarray, big_at: int, check: tuple) -> int:
        return self._kernel(events, big_at, check, *self._args)

    def warm(self) -> None:
        """Compile (or load) the kernel for read-only and writable events, so the first message
        never compiles: on a twin with an empty book of its own, so no state changes."""
        kernel, model_args, spec, n_out, T = self._parts
        twin = QuietPath(
            kernel, model_args, new_book(1, levels=spec.levels), new_ring(1, T, spec.levels),
            spec, new_report(), np.full(1, T - 1, np.int64), np.zeros(1, np.int64),
            self.records[:1].copy(), n_out,
        )  # fmt: skip
        ev = np.zeros(0, EVENT_DTYPE)
        ro = ev.copy()
        ro.flags.writeable = False
        for events in (ev, ro):
            twin.run(events, 0, no_frames())


def no_frames() -> tuple:
    """A frame check of no frames (the argument of :meth:`QuietPath.run` where events come
    without an ingest, as in tests), typed as ``Ingest.checks()``."""
    one = np.zeros(1, np.int64)
    return (one[:0], one[:0], np.full(1, np.iinfo(np.int64).min), np.zeros(1, np.int64),
            np.full(1, -1, np.int64), 0, np.iinfo(np.int64).max, -1, np.zeros(1, np.int64),
            np.zeros(1, np.int64))  # fmt: skip


def quiet_path(model, book: BookState, ring: RingState, spec: FeatureSpec, report: np.ndarray,
               last: np.ndarray, cursor: np.ndarray, records: np.ndarray) -> QuietPath | None:  # fmt: skip
    """The :class:`QuietPath` of a loaded model (``engine.daemon.LoadedModel``): its incremental
    feed where it has one, else its compiled whole-window runner; None for any other model.
    A call selects at most ``len(records)`` windows: no more than the runner's input holds.
    ``last`` and ``cursor`` are the scheduler's (``Scheduler.last``, ``Scheduler.cursor``)."""
    feed = model.feed
    b = len(records)
    if feed is not None:
        if feed.n_slots != feed.runner.n_slots:
            return None  # a grown feed spans several runners
        runner = feed.runner
        stream = runner.stream
        T = runner.T
        inc = (feed.pushed, feed.stats)
        k = b * T  # rows one call may push
        buf = (
            np.zeros(k, np.int64),
            np.zeros(k, np.bool_),
            np.zeros((k, runner.n_out), np.float32),
        )
        if isinstance(stream, ProgramStream):
            p = stream.program
            program = (p.params, p.ops, p.slopes, p.bufs, p.head)
            args = (inc, program, stream.state, runner.counts, stream.scratch, *buf)
            kernel = quiet_program
        elif isinstance(stream, HRNNStream):
            weights = tuple(stream.w[name] for name in _HRNN_WEIGHTS)
            state = (stream.summaries, stream.feats, stream.h)
            args = (inc, weights, state, runner.counts, stream.scratch, *buf, T)
            kernel = quiet_hrnn
        else:
            return None
        n_out = runner.n_out
    else:
        runner = model.runner
        if not isinstance(runner, CompiledRunner) or runner.kernel is not binctabl_forward:
            return None
        if b > len(runner.input):
            raise ValueError(f"{b} records for a runner of {len(runner.input)} windows")
        args = (runner.input, runner.params, *runner.scratch)
        kernel = quiet_window
        n_out = 3 * runner.n_heads
    return QuietPath(kernel, args, book, ring, spec, report, last, cursor, records, n_out)
