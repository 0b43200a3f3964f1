"""The planted-signal market's generator: one instrument, a fixed L-level book, one row per packet.

What it models and why is described in :mod:`lobstream.replay.feed.synthetic.planted`, which
checks the arguments and calls :func:`generate_planted`. All randomness comes from Numba's
generator seeded by ``seed``.
"""

from __future__ import annotations

import numpy as np

from lobstream.kernels._jit import njit
from lobstream.kernels.dtypes import (
    ACTION_CLEAR,
    ACTION_UPDATE,
    FLAG_LAST,
    FLAG_SNAPSHOT,
    SIDE_ASK,
    SIDE_BID,
)
from lobstream.replay.feed.synthetic.kernel import emit_event

SIGNAL_LINEAR = 0
SIGNAL_NONLINEAR = 1
MAX_SIZE = 200.0  # sizes are log-uniform on [1, MAX_SIZE]


@njit
def _size():
    return float(int(np.exp(np.random.random() * np.log(MAX_SIZE))))


@njit
def imbalance(b, a, lo, hi):
    """``(sum bid - sum ask) / (sum bid + sum ask)`` over levels ``lo .. hi - 1`` (0 = touch)."""
    sb = 0.0
    sa = 0.0
    for i in range(lo, hi):
        sb += b[i]
        sa += a[i]
    return (sb - sa) / (sb + sa)


@njit
def signal_score(kind, b, a, flow, scale_shape, scale_flow):
    """The latent score ``z`` of the decision: up has logit ``z``, down ``-z``, flat ``gamma``.

    Linear: the touch and second-level imbalances, as the logistic baseline sees them.
    Nonlinear: the product of the book's shape beyond the touch (levels 2..5) and the recent
    flow at the touch; each alone says nothing about the direction.
    """
    if kind == SIGNAL_LINEAR:
        return 0.7 * imbalance(b, a, 0, 1) + 0.3 * imbalance(b, a, 1, 2)
    shape = np.tanh(imbalance(b, a, 1, 5) / scale_shape)
    return shape * np.tanh(flow / scale_flow)


@njit
def generate_planted(events, probs, row_event, n_rows, seed, levels, kind, beta, gamma, lag,
                     p_touch, p_deep, start_mid, dt_ns, start_ts, scale_shape, scale_flow):  # fmt: skip
    """Fill ``events`` and, per row, ``probs`` (down, flat, up) of its next mid move and the
    index of the event (LAST) that completes it; returns the number of events written."""
    np.random.seed(seed)
    b = np.empty(levels, np.float64)  # bid sizes, touch first: prices mid - 1 - i
    a = np.empty(levels, np.float64)  # ask sizes, touch first: prices mid + 1 + i
    touch_imb = np.zeros(n_rows, np.float64)
    mid = np.int64(start_mid)
    ts = np.int64(start_ts)
    seq = np.uint64(0)
    m = 0
    # row 0: the opening snapshot
    seq += 1
    m = emit_event(events, m, ts, seq, 0, 0.0, 0, 0, ACTION_CLEAR, FLAG_SNAPSHOT)
    for i in range(levels):
        b[i] = _size()
        a[i] = _size()
    for i in range(levels):
        seq += 1
        m = emit_event(
            events, m, ts, seq, mid - 1 - i, b[i], 0, SIDE_BID, ACTION_UPDATE, FLAG_SNAPSHOT
        )
    for i in range(levels):
        seq += 1
        fl = FLAG_SNAPSHOT | (FLAG_LAST if i == levels - 1 else 0)
        m = emit_event(events, m, ts, seq, mid + 1 + i, a[i], 0, SIDE_ASK, ACTION_UPDATE, fl)
    move = 0
    for t in range(n_rows):
        if t > 0:
            first = m
            # the previous row's decision moves both sides one tick: the only mid change
            if move == 1:
                s = _size()
                seq += 1
                m = emit_event(events, m, ts, seq, mid + 1, 0.0, 0, SIDE_ASK, ACTION_UPDATE, 0)
                seq += 1
                m = emit_event(events, m, ts, seq, mid, s, 0, SIDE_BID, ACTION_UPDATE, 0)
                seq += 1
                m = emit_event(events, m, ts, seq, mid - levels, 0.0, 0, SIDE_BID, ACTION_UPDATE, 0)
                for i in range(levels - 1, 0, -1):
                    b[i] = b[i - 1]
                for i in range(1, levels):
                    a[i - 1] = a[i]
                b[0] = s
                a[levels - 1] = _size()
                mid += 1
                seq += 1
                m = emit_event(events, m, ts, seq, mid + levels, a[levels - 1], 0, SIDE_ASK,
                          ACTION_UPDATE, 0)  # fmt: skip
            elif move == -1:
                s = _size()
                seq += 1
                m = emit_event(events, m, ts, seq, mid - 1, 0.0, 0, SIDE_BID, ACTION_UPDATE, 0)
                seq += 1
                m = emit_event(events, m, ts, seq, mid, s, 0, SIDE_ASK, ACTION_UPDATE, 0)
                seq += 1
                m = emit_event(events, m, ts, seq, mid + levels, 0.0, 0, SIDE_ASK, ACTION_UPDATE, 0)
                for i in range(levels - 1, 0, -1):
                    a[i] = a[i - 1]
                for i in range(1, levels):
                    b[i - 1] = b[i]
                a[0] = s
                b[levels - 1] = _size()
                mid -= 1
                seq += 1
                m = emit_event(events, m, ts, seq, mid - levels, b[levels - 1], 0, SIDE_BID,
                          ACTION_UPDATE, 0)  # fmt: skip
            # size updates that keep every price: the touch often (flow), deeper rarely (shape)
            for side in range(2):
                q = b if side == SIDE_BID else a
                for i in range(levels):
                    if np.random.random() < (p_touch if i == 0 else p_deep):
                        q[i] = _size()
                        px = mid - 1 - i if side == SIDE_BID else mid + 1 + i
                        seq += 1
                        m = emit_event(events, m, ts, seq, px, q[i], 0, side, ACTION_UPDATE, 0)
            if m == first:  # every row is at least one event
                b[levels - 1] = _size()
                seq += 1
                m = emit_event(events, m, ts, seq, mid - levels, b[levels - 1], 0, SIDE_BID,
                          ACTION_UPDATE, 0)  # fmt: skip
            events[m - 1].flags = FLAG_LAST
            for j in range(first, m):
                ts += 1 + np.int64(np.random.exponential(dt_ns))
                events[j].ts_event = ts
        row_event[t] = m - 1
        touch_imb[t] = imbalance(b, a, 0, 1)
        flow = touch_imb[t] - touch_imb[t - lag] if t >= lag else 0.0
        z = beta * signal_score(kind, b, a, flow, scale_shape, scale_flow)
        e_dn = np.exp(-z)
        e_fl = np.exp(gamma)
        e_up = np.exp(z)
        tot = e_dn + e_fl + e_up
        probs[t, 0] = e_dn / tot
        probs[t, 1] = e_fl / tot
        probs[t, 2] = e_up / tot
        u = np.random.random()
        if u < probs[t, 0]:
            move = -1
        elif u < probs[t, 0] + probs[t, 1]:
            move = 0
        else:
            move = 1
    return m
