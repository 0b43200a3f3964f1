"""The model-free halves of the daemon's fused quiet-market call (:mod:`lobstream.models.quiet`).

On a quiet market the daemon's cost is the Python between its stages, not the stages: each
numpy call and kernel dispatch runs on caches gone cold since the last message. So a round the
loop infers itself is one compiled call: the frame check (``kernels.wire.check_messages``)
first, then :func:`apply_select` applies the round's events and
writes rows (the ring kernel), then scans the due windows and selects the batch exactly as
:meth:`lobstream.engine.scheduler.Scheduler.select` does; the model's kernel runs on it; and
:func:`fill_signals` writes the signal records. Python only sends them.

Both are plain ``@njit`` functions called from the fused kernels, never from Python.
"""

from __future__ import annotations

import numpy as np

from lobstream.kernels._jit import njit
from lobstream.kernels._loop import MODE_RING, _run

__all__ = ["apply_select", "fill_signals"]


@njit
def apply_select(
    bid, ask, base, best_bid, best_ask, last_seq, last_ts, stale, healing,
    top_key, top_n, n_levels, top_row, row_spec,
    events, report, rows, count, meta, slot, first, kind, nlev, a0, a1, a2, a3,
    last, cursor, stale_before, due, ids, sel, big_at,
):  # fmt: skip
    """Apply ``events`` to the book and rings, then choose the windows to infer.

    ``last`` (N,) and ``cursor`` (1,) are the scheduler's state, advanced as ``select`` does;
    ``stale_before`` (N,) gets the stale flags as they were before the events; ``due`` (N,) is
    scratch; ``ids`` (max_batch,) receives the selection, ascending from the round-robin
    cursor. ``sel`` (3,) int64 receives ``(conflated rows, 1 if windows were left due, the
    events' largest ts_recv)``.

    Returns the number of windows selected: 0 when none is due, -1 when at least ``big_at``
    (> 0) are (the inference thread's batch: nothing is selected, the caller hands over).
    """
    n = stale.shape[0]
    for i in range(n):
        stale_before[i] = stale[i]
    newest = 0
    for k in range(events.shape[0]):
        newest = max(newest, events[k].ts_recv)
    sel[2] = newest
    _run(bid, ask, base, best_bid, best_ask, last_seq, last_ts, stale, healing,
         top_key, top_n, n_levels, top_row, row_spec,
         events, report, MODE_RING, rows, count, meta, slot, first, kind, nlev, a0, a1, a2, a3)  # fmt: skip
    nd = 0
    for i in range(n):
        if count[i] > last[i] and stale[i] == 0:
            due[nd] = i
            nd += 1
    sel[0] = 0
    sel[1] = 0
    if nd == 0:
        return 0
    max_batch = ids.shape[0]
    nb = min(nd, max_batch)
    if big_at > 0 and nb >= big_at:
        return -1
    start = 0
    if nd > max_batch:
        # round-robin: from the first due id at or after the cursor, wrapping
        while start < nd and due[start] < cursor[0]:
            start += 1
        sel[1] = 1
    conflated = 0
    for b in range(nb):
        i = due[(start + b) % nd]
        ids[b] = i
        conflated += count[i] - last[i] - 1
        last[i] = count[i]
    if nd > max_batch:
        cursor[0] = ids[nb - 1] + 1
    sel[0] = conflated
    return nb


@njit
def _argmax(p, off):
    """numpy's argmax of ``p[off : off + 3]``: the first maximum, or the first NaN."""
    best = 0
    for c in range(3):
        v = p[off + c]
        if np.isnan(v):
            return c
        if v > p[off + best]:
            best = c
    return best


@njit
def fill_signals(records, ids, n, meta, probs, head_prob, head_pred):
    """Records ``records[:n]`` of instruments ``ids[:n]``: the newest row's meta, head 0's
    probabilities and argmax; for a multi-head model (``head_prob`` (B, MAX_HEADS, 3) and
    ``head_pred`` (B, MAX_HEADS), views of the v2 fields, empty for v1) every head's.
    ``probs`` (B, 3 x heads) holds each head's three probabilities in turn."""
    n_heads = probs.shape[1] // 3
    multi = head_prob.shape[0] > 0
    for b in range(n):
        i = ids[b]
        r = records[b]
        m = meta[i]
        r.instrument = i
        r.seq = m.seq
        r.ts_event = m.ts_event
        r.ts_recv = m.ts_recv
        p = probs[b]
        for c in range(3):
            r.prob[c] = p[c]
        r.pred = _argmax(p, 0)
        if multi:
            for h in range(n_heads):
                for c in range(3):
                    head_prob[b, h, c] = p[3 * h + c]
                head_pred[b, h] = _argmax(p, 3 * h)
