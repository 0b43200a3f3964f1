"""Whole-message checks of live market data before any record reaches the book.

The rules and why a message is judged as a whole are in :mod:`lobstream.engine.ingest` (which
names the verdicts, counts them and drops the messages) and :mod:`lobstream.replay.feed.wire`.
"""

from __future__ import annotations

import numpy as np

from lobstream.kernels._jit import njit
from lobstream.kernels.dtypes import ACTION_CLEAR, ACTION_TRADE, SIDE_ASK

_TS_MIN = np.iinfo(np.int64).min


@njit
def check_messages(events, insts, counts, last_ts, ref, mark, stamp, clock_limit, jump_ns,
                   verdict, where):  # fmt: skip
    """Judge each message ``f`` (records ``counts[f]`` long, back to back in ``events``) as a
    whole: ``verdict[f]`` (0 accepted, 1 wrong instrument, 2 bad event, 3 too far in the
    future, 4 too far a jump ahead) and ``where[f]``, its first bad record. ``ref`` is
    the instrument's clock as the book will have it after the accepted messages so far
    (``mark[i] == stamp`` once taken from ``last_ts`` this round). Returns the bad count."""
    n_bad = 0
    start = 0
    for f in range(insts.shape[0]):
        inst = insts[f]
        end = start + counts[f]
        v = 0
        w = start
        for k in range(start, end):
            if events[k].instrument != inst:
                v = 1
                w = k
                break
        if v == 0:
            for k in range(start, end):
                ev = events[k]
                size = ev.size
                # the book kernel's content rule, on the whole message first
                if ev.action > ACTION_TRADE or (
                    ev.action != ACTION_CLEAR
                    and (
                        ev.side > SIDE_ASK
                        or ev.price <= 0
                        or not (size >= 0.0 and size - size == 0.0)
                    )
                ):
                    v = 2
                    w = k
                    break
        if v == 0:
            for k in range(start, end):
                if events[k].ts_event > clock_limit:
                    v = 3
                    w = k
                    break
        if v == 0:
            if mark[inst] != stamp:
                mark[inst] = stamp
                ref[inst] = last_ts[inst]
            r = ref[inst]
            for k in range(start, end):
                ev = events[k]
                ts = ev.ts_event
                if ev.action == ACTION_CLEAR:
                    r = ts  # a snapshot restarts the clock (the book does the same)
                elif ts > r:
                    # unsigned: the difference of two int64 always fits
                    if (
                        r != _TS_MIN
                        and jump_ns >= 0
                        and np.uint64(ts) - np.uint64(r) > np.uint64(jump_ns)
                    ):
                        v = 4
                        w = k
                        break
                    r = ts
            if v == 0:
                ref[inst] = r
        verdict[f] = v
        where[f] = w - start
        n_bad += v != 0
        start = end
    return n_bad
