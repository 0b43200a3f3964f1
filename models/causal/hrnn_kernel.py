"""The streaming HRNN's per-event kernel: one row through the level LSTM, the time
convolution, one step of the windowed linear recurrence and the head.

Layouts are those of :func:`lobstream.models.causal.hrnn._weights`; the model and why its
state streams are described in :mod:`lobstream.models.causal.hrnn`. Compiled with
re-association and contraction, so LLVM vectorises the dot products; libm stays exact (the
LSTM's exp and tanh), and the recurrent state is float64, so the probabilities stay within
float32 round-off of the module's.
"""

from __future__ import annotations

import numpy as np

from lobstream.kernels._jit import FASTMATH_EXACT_LIBM, njit


@njit(fastmath=FASTMATH_EXACT_LIBM)
def _sigmoid(x):
    return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


@njit(fastmath=FASTMATH_EXACT_LIBM)
def _row_summary(row, w_ih, w_hh, b_lstm, w_sum, b_sum, s_out, scr):
    """The level LSTM over one row's levels (deepest first), then the summary layer."""
    g4 = w_ih.shape[0]
    hd = g4 // 4
    n_lev = w_sum.shape[1] // hd
    gates = scr[:g4]
    h = scr[g4 : g4 + hd]
    c = scr[g4 + hd : g4 + 2 * hd]
    outs = scr[g4 + 2 * hd : g4 + 2 * hd + n_lev * hd]
    for k in range(hd):
        h[k] = 0.0
        c[k] = 0.0
    for step in range(n_lev):
        lev = n_lev - 1 - step
        for j in range(g4):
            acc = b_lstm[j]
            for q in range(4):
                acc += w_ih[j, q] * row[4 * lev + q]
            for q in range(hd):
                acc += w_hh[j, q] * h[q]
            gates[j] = acc
        for k in range(hd):
            ig = _sigmoid(gates[k])
            fg = _sigmoid(gates[hd + k])
            gg = np.tanh(gates[2 * hd + k])
            og = _sigmoid(gates[3 * hd + k])
            c[k] = fg * c[k] + ig * gg
            h[k] = og * np.tanh(c[k])
            outs[step * hd + k] = h[k]
    for j in range(w_sum.shape[0]):
        acc = b_sum[j]
        for q in range(w_sum.shape[1]):
            acc += w_sum[j, q] * outs[q]
        s_out[j] = acc if acc > 0.0 else np.float32(0.0)


@njit(fastmath=FASTMATH_EXACT_LIBM)
def push(w_ih, w_hh, b_lstm, w_sum, b_sum, w_conv, b_conv, lam, lam_n, w1, b1, w2, b2,
         summaries, feats, hstate, counts, ids, rows, want, out, scratch, T):  # fmt: skip
    """Push ``rows[i]`` to slot ``ids[i]`` in order; ``out[i]`` gets the probabilities of the
    slot's window of its last T rows (NaN before T rows since the reset or where not wanted)."""
    kt, nc, ns = w_conv.shape
    ring = summaries.shape[1]  # R - 1 (1 when R = 1, unused then)
    n_win = feats.shape[1]
    g4 = w_ih.shape[0]
    hd = g4 // 4
    n_lev = w_sum.shape[1] // hd
    lstm_scr = scratch[: g4 + 2 * hd + n_lev * hd]
    o = g4 + 2 * hd + n_lev * hd
    s_new = scratch[o : o + ns]
    f_new = scratch[o + ns : o + ns + nc]
    z = scratch[o + ns + nc : o + ns + 3 * nc]
    hid = scratch[o + ns + 3 * nc : o + ns + 3 * nc + w1.shape[0]]
    n_out = w2.shape[0]
    lg = scratch[o + ns + 3 * nc + w1.shape[0] : o + ns + 3 * nc + w1.shape[0] + n_out]
    for i in range(ids.shape[0]):
        slot = ids[i]
        t = counts[slot]
        _row_summary(rows[i], w_ih, w_hh, b_lstm, w_sum, b_sum, s_new, lstm_scr)
        if t + 1 >= kt:
            # time convolution over rows t-R+1..t: tap k reads row t-R+1+k
            for ch in range(nc):
                acc = b_conv[ch]
                for k in range(kt - 1):
                    src = summaries[slot, (t - kt + 1 + k) % ring]
                    for q in range(ns):
                        acc += w_conv[k, ch, q] * src[q]
                for q in range(ns):
                    acc += w_conv[kt - 1, ch, q] * s_new[q]
                f_new[ch] = acc if acc > 0.0 else np.float32(0.0)
            # one step of the windowed recurrence; the ring slot holds the row leaving the
            # window (zeros until the window has n feature rows)
            pos = (t + 1 - kt) % n_win
            for ch in range(nc):
                a = lam[ch]
                hstate[slot, ch] = a * hstate[slot, ch] + (1.0 - a) * (
                    np.float64(f_new[ch]) - lam_n[ch] * np.float64(feats[slot, pos, ch])
                )
                feats[slot, pos, ch] = f_new[ch]
        if kt > 1:
            for q in range(ns):
                summaries[slot, t % ring, q] = s_new[q]
        counts[slot] = t + 1
        if t + 1 < T or not want[i]:
            for j in range(n_out):
                out[i, j] = np.nan
            continue
        for ch in range(nc):
            z[ch] = np.float32(hstate[slot, ch])
            z[nc + ch] = f_new[ch]
        for j in range(w1.shape[0]):
            acc = b1[j]
            for q in range(2 * nc):
                acc += w1[j, q] * z[q]
            hid[j] = acc if acc > 0.0 else np.float32(0.0)
        # softmax per head: logits 3 h .. 3 h + 2 are head h's (models.heads)
        for g in range(0, n_out, 3):
            best = -np.inf
            for j in range(g, g + 3):
                acc = b2[j]
                for q in range(w1.shape[0]):
                    acc += w2[j, q] * hid[q]
                lg[j] = acc
                if acc > best:
                    best = acc
            tot = np.float32(0.0)
            for j in range(g, g + 3):
                lg[j] = np.exp(lg[j] - best)
                tot += lg[j]
            for j in range(g, g + 3):
                out[i, j] = lg[j] / tot
