"""Continuous batching: which instruments to infer next, and how many updates were conflated.

After a round of ingest, every instrument whose ring gained rows since its last inference, that
has a full window and is not stale, is due. At most ``max_batch`` are taken per model call;
the rest stay due for the next call (taken round-robin, so a busy low-id instrument cannot
starve the others). Only the newest window of an instrument is inferred: rows written between
two inferences beyond the first are counted as conflated.
"""

from __future__ import annotations

import os
import threading

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

    def select(self, count: np.ndarray, stale: np.ndarray) -> tuple[np.ndarray, int]:
        """Take up to ``max_batch`` due instruments and mark them inferred at their current count.

        Returns
        -------
        ids : ndarray (B,) int64
            Instruments to gather and infer, B <= max_batch (possibly 0).
        conflated : int
            Rows of those instruments that will never be inferred on their own window.
        """
        ids = self.due(count, stale)
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
    """Runs ``runner.infer(n)`` on its own thread, so the loop keeps draining and applying
    market data while a large batch is in the model (TorchScript releases the GIL).

    The loop owns one end of an inproc PAIR socket (``sock``, created here, in the loop's
    thread); the worker thread creates and owns the other end and sends one empty message per
    finished call, which the loop polls next to its ingest socket. The runner's input buffer
    must not be written while a call is in flight.
    """

    def __init__(self, ctx: zmq.Context, cpus: tuple[int, ...] = ()) -> None:
        self.cpus = tuple(cpus)
        self.addr = f"inproc://lobstream-infer-{id(self)}"
        self.sock = ctx.socket(zmq.PAIR)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.addr)  # inproc: bind before the worker connects
        self._ctx = ctx
        self._go = threading.Event()
        self._stop = threading.Event()
        self._job: tuple | None = None
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None
        self.busy = False
        self.thread = threading.Thread(target=self._run, name="lobstream-infer", daemon=True)
        self.thread.start()

    def submit(self, runner, n: int) -> None:
        """Start ``runner.infer(n)``; its result is in ``result`` once :meth:`done`."""
        self._job = (runner, n)
        self.busy = True
        self._go.set()

    def done(self, timeout_ms: int = 0) -> bool:
        """Whether the call in flight has finished (waits up to ``timeout_ms``)."""
        if not self.busy or not self.sock.poll(timeout_ms):
            return False
        self.sock.recv()
        self.busy = False
        return True

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
                if self._job is None:
                    continue
                runner, n = self._job
                self._job = None
                try:
                    self.result, self.error = runner.infer(n), None
                except BaseException as exc:  # handed to the loop, which decides
                    self.result, self.error = None, exc
                sock.send(b"")
        finally:
            sock.close()

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop the thread (joined with a timeout) and close the loop's socket."""
        self._stop.set()
        self._go.set()
        self.thread.join(timeout=timeout_s)
        self.sock.close()
