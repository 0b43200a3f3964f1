"""The rows an incremental runner has not been given yet, and the model call that gives them.

For a causal artifact on the CPU, :class:`IncrementalFeed` turns a selection of the scheduler
into one call of an :class:`~lobstream.models.incremental.IncrementalRunner` instead of a batch
of windows: every row the ring gained since the instrument's last call is pushed, in order, the
conflated ones without the head.
"""

from __future__ import annotations

import numpy as np


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
