"""Continuous batching: which instruments to infer next, and how many updates were conflated.

After a round of ingest, every instrument whose ring gained rows since its last inference, that
has a full window and is not stale, is due. At most ``max_batch`` are taken per model call;
the rest stay due for the next call (taken round-robin, so a busy low-id instrument cannot
starve the others). Only the newest window of an instrument is inferred: rows written between
two inferences beyond the first are counted as conflated.

Who makes each call, the loop or the inference thread, is :mod:`lobstream.engine.handoff`.
"""

from __future__ import annotations

import numpy as np


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
        # where the next round-robin selection starts; an array, so that the daemon's fused
        # quiet call (models.quiet) advances the same state
        self.cursor = np.zeros(1, np.int64)

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
            start = np.searchsorted(ids, self.cursor[0])
            ids = np.concatenate((ids[start:], ids[:start]))[: self.max_batch]
            self.cursor[0] = ids[-1] + 1
        conflated = int((count[ids] - self.last[ids] - 1).sum())
        self.last[ids] = count[ids]
        return ids, conflated

    def forget_stale(self, count: np.ndarray, stale: np.ndarray) -> None:
        """Drop pending rows of stale instruments: their windows predate the fault."""
        s = stale != 0
        self.last[s] = np.maximum(self.last[s], count[s])
