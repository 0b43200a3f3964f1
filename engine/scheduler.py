"""Continuous batching: which instruments to infer next, and how many updates were conflated.

After a round of ingest, every instrument whose ring gained rows since its last inference, that
has a full window and is not stale, is due. At most ``max_batch`` are taken per model call;
the rest stay due for the next call (taken round-robin, so a busy low-id instrument cannot
starve the others). Only the newest window of an instrument is inferred: rows written between
two inferences beyond the first are counted as conflated.

For a causal artifact on the CPU, :class:`IncrementalFeed` turns a selection into one call of
an :class:`~lobstream.models.incremental.IncrementalRunner` instead of a batch of windows: every
row the ring gained since the instrument's last call is pushed, in order, the conflated ones
without the head.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque

import numpy as np
import zmq


class Scheduler:
    """Tracks the ring count at each instrument's last inference.

    Parameters
    ----------
    n_instruments : int
    window : int
        T: an instrument is due only once its ring holds ``window`` rows.
    max_batch : int
        Most instruments per :meth:`select`.
    """

    def __init__(self, n_instruments: int, window: int, max_batch: int) -> None:
        self.window = int(window)
        self.max_batch = int(max_batch)
        # rows below a full window can never be inferred, so they are not "conflated" either
        self.last = np.full(n_instruments, self.window - 1, np.int64)
        self._cursor = 0

    def due(self, count: np.ndarray, stale: np.ndarray) -> np.ndarray:
        """Ids of due instruments, (k,) int64 ascending.

        Parameters
        ----------
        count : ndarray (N,) int64
            Rows ever written per instrument (the ring's ``count``); not modified.
        stale : ndarray (N,) uint8
            The book's stale flags; not modified.
        """
        return np.flatnonzero((count > self.last) & (stale == 0))

    def select(
        self,
        count: np.ndarray,
        stale: np.ndarray,
        min_batch: int = 1,
        due: np.ndarray | None = None,
    ) -> tuple[np.ndarray, int]:
        """Take up to ``max_batch`` due instruments and mark them inferred at their current count;
        none when fewer than ``min_batch`` are due.

        ``due``: the ids :meth:`due` gave for these ``count`` and ``stale`` (a caller that has
        just scanned passes them instead of scanning again).

        Returns
        -------
        ids : ndarray (B,) int64
            Instruments to gather and infer, B <= max_batch (possibly 0).
        conflated : int
            Rows of those instruments that will never be inferred on their own window.
        """
        ids = self.due(count, stale) if due is None else due
        if len(ids) < min(max(min_batch, 1), self.max_batch):
            return ids[:0], 0
        if len(ids) > self.max_batch:
            start = np.searchsorted(ids, self._cursor)
            ids = np.concatenate((ids[start:], ids[:start]))[: self.max_batch]
            self._cursor = int(ids[-1]) + 1
        conflated = int((count[ids] - self.last[ids] - 1).sum())
        self.last[ids] = count[ids]
        return ids, conflated

    def forget_stale(self, count: np.ndarray, stale: np.ndarray) -> None:
        """Drop pending rows of stale instruments: their windows predate the fault."""
        s = stale != 0
        self.last[s] = np.maximum(self.last[s], count[s])


class InferenceWorker:
    """Model calls on a thread of their own that takes its next batch itself.

    Under load the model is the bottleneck, so it must not wait for the loop between calls:
    handing each batch over (the loop waking, choosing and gathering, then waking this thread)
    left the model idle ~20 % of the time on a busy 2-core machine. So the thread calls
    ``next_job()`` as soon as a call ends; the daemon's ``next_job`` chooses and gathers the
    batch under the lock that also guards its book updates (the kernels release the GIL, so the
    two threads really run at once), and returns ``(runner, n, tag)``, or None when too little
    is due, after which the thread sleeps until :meth:`kick`. TorchScript releases the GIL, so
    the loop keeps draining and applying market data while a batch is in the model.

    Each finished call is appended to a queue as ``(tag, probs, error, t_done_ns)`` and
    announced with one empty message on an inproc PAIR socket: the loop owns ``sock`` (created
    here, in the loop's thread), polls it next to its ingest socket and calls :meth:`take`.
    A result is queued before the next ``next_job`` call, so once ``next_job`` has returned None
    every result of the run is in the queue; parking is announced too (an empty message with
    nothing queued), so the loop never sleeps on windows the thread left due.
    """

    def __init__(self, ctx: zmq.Context, next_job, cpus: tuple[int, ...] = ()) -> None:
        self.cpus = tuple(cpus)
        self.addr = f"inproc://lobstream-infer-{id(self)}"
        self.sock = ctx.socket(zmq.PAIR)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.addr)  # inproc: bind before the worker connects
        self._ctx = ctx
        self._next_job = next_job
        self._go = threading.Event()
        self._stop = threading.Event()
        self._done: deque = deque()
        self.thread = threading.Thread(target=self._run, name="lobstream-infer", daemon=True)
        self.thread.start()

    def kick(self) -> None:
        """Wake the thread: it calls ``next_job`` until that returns None."""
        self._go.set()

    def take(self) -> list[tuple]:
        """Finished calls, oldest first: ``(tag, probs, error, t_done_ns)`` each."""
        # the loop calls this twice a round: asking for readiness (~2 us here) costs half of a
        # recv that raises zmq.Again on an empty socket, the common case at low load
        sock, events, pollin = self.sock, zmq.EVENTS, zmq.POLLIN
        while sock.getsockopt(events) & pollin:
            sock.recv(zmq.NOBLOCK)
        out = []
        while self._done:
            out.append(self._done.popleft())
        return out

    def wait(self, timeout_ms: int) -> bool:
        """Wait up to ``timeout_ms`` for a finished call to be announced."""
        return bool(self.sock.poll(timeout_ms))

    def _run(self) -> None:
        if self.cpus:
            # pid 0 is the calling thread on Linux: only this thread (and the torch threads
            # it starts) moves; the loop keeps its own CPUs
            os.sched_setaffinity(0, self.cpus)
        sock = self._ctx.socket(zmq.PAIR)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.addr)
        try:
            while not self._stop.is_set():
                if not self._go.wait(0.1):
                    continue
                self._go.clear()
                while not self._stop.is_set():
                    try:
                        job = self._next_job()
                    except BaseException as exc:  # handed to the loop, which decides
                        self._done.append((None, None, exc, time.perf_counter_ns()))
                        sock.send(b"")
                        break
                    if job is None:
                        # parked: wake the loop, which infers inline what is still due (fewer
                        # than the thread's batch) instead of waiting for the next message
                        sock.send(b"")
                        break
                    runner, n, tag = job
                    try:
                        probs, err = runner.infer(n), None
                    except BaseException as exc:
                        probs, err = None, exc
                    self._done.append((tag, probs, err, time.perf_counter_ns()))
                    sock.send(b"")
        finally:
            sock.close()

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop the thread (joined with a timeout) and close the loop's socket."""
        self._stop.set()
        self._go.set()
        self.thread.join(timeout=timeout_s)
        self.sock.close()


class IncrementalCall:
    """One selection's rows for an incremental runner; ``infer(n)`` as ``ModelRunner.infer``.

    Built by :meth:`IncrementalFeed.take` under the daemon's lock (the rows are copies), run
    wherever the batch runs (the loop or the inference thread), after every earlier call of
    the same feed: each slot's rows must reach the runner in arrival order.
    """

    __slots__ = ("runner", "slots", "rows", "want", "lapped")

    def __init__(self, runner, slots, rows, want, lapped) -> None:
        self.runner = runner
        self.slots = slots  # (K,) int64: instrument of each row, in arrival order per instrument
        self.rows = rows  # (K, F) float32
        self.want = want  # (K,) bool: the newest row of each selected instrument
        self.lapped = lapped  # instruments whose slot restarts from the ring's window

    def infer(self, n: int) -> np.ndarray:
        """Probabilities (n, 3) of the selected instruments' newest windows, in selection order."""
        if len(self.lapped):
            # not for the numbers (the window's T rows overwrite every cache of the slot) but
            # so that the slot's count is again the rows it holds in a row
            self.runner.reset(self.lapped)
        out = self.runner.push(self.slots, self.rows, self.want)[self.want]
        if len(out) != n:
            raise ValueError(f"incremental call holds {len(out)} windows, asked for {n}")
        return out


class IncrementalFeed:
    """Which ring rows an :class:`~lobstream.models.incremental.IncrementalRunner` (slot ``i``
    = instrument ``i``) has not been given yet, and the call that gives them.

    ``pushed[i]`` is the ring count up to which slot ``i`` holds instrument ``i``'s rows. A
    selected instrument's rows ``pushed[i] .. count[i]`` are pushed, the newest with the head
    (its signal), the others without (they only move the caches). Rows are taken from the
    ring lazily, at selection, so a row that no signal needs costs nothing until the next
    signal of its instrument, and an instrument that gained more than ``T`` rows since (the
    ring has lapped them; or a runner new after a reload, ``pushed`` = 0) restarts its slot
    from the ring's whole window: the window's probabilities depend on its ``T`` rows alone,
    so the result is the same as if every row had been pushed.
    """

    def __init__(self, runner, n_instruments: int) -> None:
        if runner.n_slots < n_instruments:
            raise ValueError(
                f"incremental runner has {runner.n_slots} slots for {n_instruments} instruments"
            )
        self.runner = runner
        self.T = int(runner.T)
        self.pushed = np.zeros(n_instruments, np.int64)
        # counts for the heartbeat: every row of a selected instrument is pushed or skipped
        self.rows_pushed = 0
        self.rows_skipped = 0  # older than the window at a restart: no signal can need them
        self.restarts = 0

    def take(self, ring, ids: np.ndarray) -> IncrementalCall:
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
        self.rows_pushed += total
        self.rows_skipped += int((new - k).sum())
        self.restarts += len(lapped)
        return IncrementalCall(self.runner, slots, ring.rows[slots, pos], want, lapped)
