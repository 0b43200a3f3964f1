"""Who makes the next model call, the daemon's loop or its inference thread, and on what.

At low load the loop infers inline: one call per round on the windows that became due. Once
``overlap_batch`` windows or more are due, the inference thread (:class:`InferenceWorker`)
takes over and chooses each next batch itself the moment a call ends, while the loop keeps
applying market data; it parks again when fewer are due. :class:`Handoff` is that protocol in
one place: the lock shared with the loop's book and ring updates, which side owns the runner
(``pulling``), the hold a model swap or shutdown puts on the thread, and the single scan of
the due windows a round.

State, all guarded by ``lock``:

- ``pulling``: the thread owns the runner and takes batches itself. Set by the loop when it
  starts the thread, cleared by the thread when it parks.
- ``hold``: the thread must not take another batch (a swap or shutdown waits for it to park);
  the loop does not start it either. Lifted by :meth:`release`.

The loop owns the rings' writes, so it reads them without the lock whenever the thread is
parked; the thread reads them only under the lock.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from lobstream.engine.scheduler import Scheduler

if TYPE_CHECKING:
    from lobstream.models.runner import Inferable

    # gather(ids, conflated) -> (call, tag): ``call.infer(len(ids))`` runs the batch, the tag
    # goes back with its result. Called under the lock: the windows cannot change meanwhile.
    Gather = Callable[[np.ndarray, int], tuple[Inferable, Any]]


class Handoff:
    """Chooses the instruments of each model call and which thread makes it.

    Parameters
    ----------
    scheduler : Scheduler
        Due windows, round-robin selection and conflation counts.
    count, stale : ndarray (N,)
        The ring's row counts and the book's stale flags (read, never written, here).
    overlap_batch : int
        Due windows from which the inference thread takes over; 0: the loop makes every call.
    """

    def __init__(
        self, scheduler: Scheduler, count: np.ndarray, stale: np.ndarray, overlap_batch: int
    ) -> None:
        self.scheduler = scheduler
        self.count = count
        self.stale = stale
        self.overlap_batch = int(overlap_batch)
        self.lock = threading.Lock()
        self.pulling = False
        self.hold = False
        # set by plan(): windows were left due (more than max_batch), so the loop must not block
        # before its next round
        self.more_due = False
        self.worker: InferenceWorker | None = None
        self._gather: Gather | None = None

    def start_worker(
        self, ctx: zmq.Context, gather: Gather, cpus: tuple[int, ...] = ()
    ) -> InferenceWorker:
        """Create the inference thread (parked); ``gather`` builds each batch it takes."""
        self._gather = gather
        self.worker = InferenceWorker(ctx, self._next_job, cpus)
        return self.worker

    # -- the loop's side ------------------------------------------------------------------
    def plan(self) -> tuple[np.ndarray, int]:
        """Once a round, on the loop: the batch to infer inline, ``(ids, conflated)``, empty
        when nothing is due or the thread has the due windows (running, or started here).

        The due windows are scanned once; the inline batch is selected from that scan."""
        self.more_due = False
        if self.worker is None:
            due = self.scheduler.due(self.count, self.stale)
        else:
            with self.lock:
                if self.pulling:
                    return _NONE  # it takes whatever is due, and wakes the loop when done
                due = self.scheduler.due(self.count, self.stale)
                if len(due) == 0:
                    return _NONE
                big = min(len(due), self.scheduler.max_batch) >= self.overlap_batch
                if big and not self.hold:
                    self.pulling = True
                    self.worker.kick()
                    return _NONE
        # the thread is parked and only this thread starts it: the selection needs no lock
        # (the loop is the only writer of the rings)
        ids, conflated = self.scheduler.select(self.count, self.stale, due=due)
        self.more_due = len(due) > len(ids)
        return ids, conflated

    def forget_stale(self) -> None:
        """Drop the pending rows of stale instruments (their windows predate the fault)."""
        with self.lock:
            self.scheduler.forget_stale(self.count, self.stale)

    def park(self, timeout_s: float = 0.0, on_result: Callable[[], Any] | None = None) -> bool:
        """Hold the thread and wait up to ``timeout_s`` for it to park, calling ``on_result``
        when it announces something meanwhile; whether it is parked (then the runner is the
        loop's). The hold lasts until :meth:`release`, or for good at shutdown."""
        with self.lock:
            self.hold = True
            if not self.pulling:
                return True
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            self.worker.wait(10)
            if on_result is not None:
                on_result()
            with self.lock:
                if not self.pulling:
                    return True
        return False

    def release(self) -> None:
        """Lift the hold: the loop may start the thread again."""
        with self.lock:
            self.hold = False

    # -- the inference thread's side --------------------------------------------------------
    def _next_job(self) -> tuple | None:
        """The thread's next batch, ``(call, n, tag)``; None parks it (fewer than
        ``overlap_batch`` due, or held)."""
        with self.lock:
            ids, conflated = (
                self.scheduler.select(self.count, self.stale, self.overlap_batch)
                if not self.hold
                else _NONE
            )
            if len(ids) == 0:
                self.pulling = False
                return None
            call, tag = self._gather(ids, conflated)
        return call, len(ids), tag


_NONE = (np.zeros(0, np.int64), 0)


class InferenceWorker:
    """Model calls on a thread of their own that takes its next batch itself.

    Under load the model is the bottleneck, so it must not wait for the loop between calls:
    handing each batch over (the loop waking, choosing and gathering, then waking this thread)
    left the model idle ~20 % of the time on a busy 2-core machine. So the thread calls
    ``next_job()`` (:meth:`Handoff._next_job`) as soon as a call ends; it chooses and gathers
    the batch under the lock that also guards the loop's book updates (the kernels release the
    GIL, so the two threads really run at once), and returns ``(call, n, tag)``, or None when
    too little is due, after which the thread sleeps until :meth:`kick`. TorchScript releases
    the GIL, so the loop keeps draining and applying market data while a batch is in the model.

    Each finished call is appended to a queue as ``(tag, probs, error, t_done_ns)`` and
    announced with one empty message on an inproc PAIR socket: the loop owns ``sock`` (created
    here, in the loop's thread), polls it next to its ingest socket and calls :meth:`take`.
    A result is queued before the next ``next_job`` call, so once ``next_job`` has returned None
    every result of the run is in the queue; parking is announced too (an empty message with
    nothing queued), so the loop never sleeps on windows the thread left due.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        next_job: Callable[[], tuple | None],
        cpus: tuple[int, ...] = (),
    ) -> None:
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
        # the loop calls this twice a round: asking for readiness costs about half of a
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
                    call, n, tag = job
                    try:
                        probs, err = call.infer(n), None
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
