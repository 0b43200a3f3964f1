"""Numba kernels of incremental (per-event) inference for causal models.

A causal model is compiled by :mod:`lobstream.models.causal.runner` into a small *program*:

- ``params`` float32 (P,): every weight, flattened, at the offsets the tables name.
- ``ops`` int64 (n_ops, N_OP_FIELDS): one row of convolution along time and levels (plus its
  activation, per-channel affine and level max-pool) or one max-pool along time, in the order
  they run. Each op reads the last ``KT`` rows of an input ring buffer and writes one row of an
  output ring buffer (at a channel offset, so branches can concatenate).
- ``slopes`` float32 (n_ops,): the LeakyReLU slope of each op (0 for ReLU).
- ``bufs`` int64 (n_bufs, N_BUF_FIELDS): where each ring lives in a slot's state row, its
  depth (rows kept), width (levels) and channels. Buffer 0 holds the input rows.
- ``head`` int64 (N_HEAD_FIELDS,): which head, its sizes and its weights' offsets.

A slot's state is one float32 row of ``state`` (n_slots, S) holding all its rings; ``counts``
(n_slots,) is the number of rows pushed since reset. Input row ``c`` of a slot is written at
ring row ``c % depth`` of every buffer, so one counter indexes every ring and a new row costs
one output row per op. A ring of depth d keeps exactly the d most recent rows, which is what an
op with ``KT = d`` reads; rows before a reset are never read by a window that is ready (every
row a ready window depends on was pushed after the reset), and reset zeroes them anyway.

Heads: ``HEAD_LSTM`` keeps a ring of the LSTM input projections ``W_ih f + b_ih + b_hh`` of the
last feature rows, so an event costs one projection and the recurrent steps from a zero state
over every ``stride``-th of the window's T' = T - R + 1 feature rows, ending at the newest;
``HEAD_MLP`` keeps the feature rows themselves (the last op's output ring, depth T') and runs
its two Linear layers over them in window order.

Every kernel is single-threaded, allocates nothing per event (``scratch`` is the caller's)
and reports nothing: the Python layer validates shapes and ids before calling.
"""

from __future__ import annotations

import numpy as np

from lobstream.kernels._jit import FASTMATH_APPROX_LIBM, njit

# ---- op table fields ---------------------------------------------------------------------
OP_KIND = 0  # OPK_CONV or OPK_TMAXPOOL
OP_IN = 1  # input buffer
OP_OUT = 2  # output buffer
OP_COFF = 3  # first output channel in the output buffer
OP_KT = 4  # rows along time (<= the input ring's depth)
OP_KW = 5  # kernel along levels
OP_SW = 6  # stride along levels
OP_PW = 7  # zero padding along levels, both sides
OP_WCONV = 8  # conv output width before the level pool
OP_COUT = 9  # output channels (TMAXPOOL: the input's channels)
OP_POOL = 10  # level max-pool size and stride (1: none; floor as MaxPool2d)
OP_ACT = 11  # ACT_NONE, ACT_RELU or ACT_LEAKY (slope in ``slopes``)
OP_WOFF = 12  # weights (KT, KW, C_in, C_out)
OP_BOFF = 13  # bias (C_out)
OP_AOFF = 14  # affine scale (C_out) then shift (C_out), after the activation; -1: none
N_OP_FIELDS = 15

OPK_CONV = 0
OPK_TMAXPOOL = 1
ACT_NONE = 0
ACT_RELU = 1
ACT_LEAKY = 2

# ---- buffer table fields -----------------------------------------------------------------
BUF_OFF = 0  # offset in the slot's state row
BUF_DEPTH = 1
BUF_W = 2
BUF_C = 3
N_BUF_FIELDS = 4

# ---- head fields -------------------------------------------------------------------------
HD_KIND = 0  # HEAD_LSTM or HEAD_MLP
HD_T = 1  # window rows T
HD_NF = 2  # feature rows per window T' = T - R + 1
HD_C = 3  # feature width
HD_H = 4  # LSTM hidden size / MLP hidden width
HD_NC = 5  # classes
HD_FEAT = 6  # feature buffer (the last op's output)
HD_W1 = 7  # LSTM: W_ih^T (C, 4H); MLP: W1 as (T', C, H)
HD_B1 = 8  # LSTM: b_ih + b_hh (4H); MLP: b1 (H)
HD_W2 = 9  # LSTM: W_hh^T (H, 4H); MLP: W2 (NC, H)
HD_B2 = 10  # LSTM: unused; MLP: b2 (NC)
HD_W3 = 11  # LSTM: fc weight (NC, H)
HD_B3 = 12  # LSTM: fc bias (NC)
HD_XP = 13  # LSTM: projection ring (HD_XPD, 4H) in the state row
HD_STEPS = 14  # LSTM: recurrent steps per window
HD_STRIDE = 15  # LSTM: feature rows between steps (the last step reads the newest row)
HD_XPD = 16  # LSTM: projection ring depth, (steps - 1) * stride + 1 <= T'
N_HEAD_FIELDS = 17

HEAD_LSTM = 0
HEAD_MLP = 1

# Eigen's rational approximation of tanh (odd degree 13 over even degree 6), float32
# everywhere: max abs error 3.4e-7 against float64 tanh, measured on [-12, 12]. Unlike a call
# to libm's expf it vectorises, and the LSTM evaluates 5 x 64 of them per recurrent step.
_TANH_CLAMP = np.float32(7.90531110763549805)
_A1 = np.float32(4.89352455891786e-03)
_A3 = np.float32(6.37261928875436e-04)
_A5 = np.float32(1.48572235717979e-05)
_A7 = np.float32(5.12229709037114e-08)
_A9 = np.float32(-8.60467152213735e-11)
_A11 = np.float32(2.00018790482477e-13)
_A13 = np.float32(-2.76076847742355e-16)
_B0 = np.float32(4.89352518554385e-03)
_B2 = np.float32(2.26843463243900e-03)
_B4 = np.float32(1.18534705686654e-04)
_B6 = np.float32(1.19825839466702e-06)
_HALF = np.float32(0.5)


@njit(fastmath=FASTMATH_APPROX_LIBM, inline="always")
def _tanh(x):
    x = min(max(x, -_TANH_CLAMP), _TANH_CLAMP)
    x2 = x * x
    p = x2 * _A13 + _A11
    p = p * x2 + _A9
    p = p * x2 + _A7
    p = p * x2 + _A5
    p = p * x2 + _A3
    p = p * x2 + _A1
    q = x2 * _B6 + _B4
    q = q * x2 + _B2
    q = q * x2 + _B0
    return x * p / q


@njit(fastmath=FASTMATH_APPROX_LIBM, inline="always")
def _sigmoid(x):
    return _HALF + _HALF * _tanh(_HALF * x)  # exact identity; keeps one approximation


def tanh_approx(x: np.ndarray) -> np.ndarray:
    """The kernels' tanh on an array (float32 in and out), for tests of its accuracy."""
    return _tanh_array(np.ascontiguousarray(x, dtype=np.float32))


@njit(fastmath=FASTMATH_APPROX_LIBM)
def _tanh_array(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out.flat[i] = _tanh(x.flat[i])
    return out


# ---- trunk ---------------------------------------------------------------------------------


@njit(fastmath=FASTMATH_APPROX_LIBM)
def _conv_op(op, slope, params, bufs, st, c, acc):
    """One output row of a conv op for input row ``c``; writes the output ring of ``st``."""
    bi, bo = op[OP_IN], op[OP_OUT]
    din, win, cin = bufs[bi, BUF_DEPTH], bufs[bi, BUF_W], bufs[bi, BUF_C]
    ib = bufs[bi, BUF_OFF]
    kt, kw, sw, pw = op[OP_KT], op[OP_KW], op[OP_SW], op[OP_PW]
    wconv, cout, pool = op[OP_WCONV], op[OP_COUT], op[OP_POOL]
    woff, boff, aoff, act = op[OP_WOFF], op[OP_BOFF], op[OP_AOFF], op[OP_ACT]
    row = win * cin
    bias = params[boff : boff + cout]
    for wo in range(wconv):
        a0 = wo * cout
        # slices, not offset indices, in the inner loops: Numba wraps a signed index that may
        # be negative, and that branch alone kept LLVM from vectorising the loop
        out = acc[a0 : a0 + cout]
        for co in range(cout):
            out[co] = bias[co]
        for t in range(kt):
            # oldest of the KT rows first; c + din keeps the index non-negative
            r = (c + din - kt + 1 + t) % din
            for k in range(kw):
                wi = wo * sw + k - pw
                if wi < 0 or wi >= win:
                    continue  # zero padding along levels
                x0 = ib + r * row + wi * cin
                w0 = woff + ((t * kw + k) * cin) * cout
                for ci in range(cin):
                    v = st[x0 + ci]
                    wrow = params[w0 + ci * cout : w0 + (ci + 1) * cout]
                    for co in range(cout):  # contiguous in both: vectorises
                        out[co] += wrow[co] * v
    n = wconv * cout
    if act == ACT_RELU:
        for j in range(n):
            acc[j] = max(acc[j], np.float32(0.0))
    elif act == ACT_LEAKY:
        for j in range(n):
            v = acc[j]
            acc[j] = v if v >= 0 else v * slope
    if aoff >= 0:
        scale = params[aoff : aoff + cout]
        shift = params[aoff + cout : aoff + 2 * cout]
        for wo in range(wconv):
            out = acc[wo * cout : (wo + 1) * cout]
            for co in range(cout):
                out[co] = out[co] * scale[co] + shift[co]
    dout, wout, ctot = bufs[bo, BUF_DEPTH], bufs[bo, BUF_W], bufs[bo, BUF_C]
    o0 = bufs[bo, BUF_OFF] + (c % dout) * wout * ctot + op[OP_COFF]
    for wp in range(wout):
        dst = st[o0 + wp * ctot : o0 + wp * ctot + cout]
        a0 = wp * pool * cout
        first = acc[a0 : a0 + cout]
        for co in range(cout):
            dst[co] = first[co]
        for p in range(1, pool):
            other = acc[a0 + p * cout : a0 + (p + 1) * cout]
            for co in range(cout):
                dst[co] = max(dst[co], other[co])


@njit(fastmath=FASTMATH_APPROX_LIBM)
def _tmaxpool_op(op, bufs, st, c):
    """Max over the last KT rows of the input ring, for every level and channel."""
    bi, bo = op[OP_IN], op[OP_OUT]
    din, win, cin = bufs[bi, BUF_DEPTH], bufs[bi, BUF_W], bufs[bi, BUF_C]
    kt, row = op[OP_KT], win * cin
    dout, ctot = bufs[bo, BUF_DEPTH], bufs[bo, BUF_C]
    o0 = bufs[bo, BUF_OFF] + (c % dout) * win * ctot + op[OP_COFF]
    for t in range(kt):
        rb = bufs[bi, BUF_OFF] + ((c + din - kt + 1 + t) % din) * row
        for w in range(win):
            dst = st[o0 + w * ctot : o0 + w * ctot + cin]
            src = st[rb + w * cin : rb + (w + 1) * cin]
            for ci in range(cin):
                dst[ci] = src[ci] if t == 0 else max(dst[ci], src[ci])


# ---- heads ---------------------------------------------------------------------------------


@njit(fastmath=FASTMATH_APPROX_LIBM)
def _lstm_project(head, params, bufs, st, c):
    """Input projection of the feature row of input row ``c`` into the projection ring."""
    C, H = head[HD_C], head[HD_H]
    g4 = 4 * H
    fb = head[HD_FEAT]
    f0 = bufs[fb, BUF_OFF] + (c % bufs[fb, BUF_DEPTH]) * C
    x0 = head[HD_XP] + (c % head[HD_XPD]) * g4
    w1, b1 = head[HD_W1], head[HD_B1]
    xp = st[x0 : x0 + g4]
    bias = params[b1 : b1 + g4]
    for j in range(g4):
        xp[j] = bias[j]
    for k in range(C):
        v = st[f0 + k]
        wrow = params[w1 + k * g4 : w1 + (k + 1) * g4]
        for j in range(g4):
            xp[j] += wrow[j] * v


@njit(fastmath=FASTMATH_APPROX_LIBM)
def _lstm_logits(head, params, st, c, gates, hc, logits):
    """The LSTM over the window's strided projections (oldest first) from a zero state, then
    fc."""
    H, ncls = head[HD_H], head[HD_NC]
    steps, stride, dxp = head[HD_STEPS], head[HD_STRIDE], head[HD_XPD]
    g4 = 4 * H
    whh, wfc, bfc = head[HD_W2], head[HD_W3], head[HD_B3]
    h, cell = hc[:H], hc[H : 2 * H]
    gi, gf, gg_, go = gates[:H], gates[H : 2 * H], gates[2 * H : 3 * H], gates[3 * H : g4]
    for j in range(H):
        h[j] = 0.0
        cell[j] = 0.0
    for s in range(steps):
        # step s reads input row c - (steps - 1 - s) * stride; + dxp keeps it non-negative
        x0 = head[HD_XP] + ((c + dxp - (steps - 1 - s) * stride) % dxp) * g4
        xp = st[x0 : x0 + g4]
        for j in range(g4):
            gates[j] = xp[j]
        if s > 0:  # h is zero before the first step
            for k in range(H):
                hk = h[k]
                wrow = params[whh + k * g4 : whh + (k + 1) * g4]
                for j in range(g4):
                    gates[j] += wrow[j] * hk
        # PyTorch's gate order: input, forget, cell, output
        for j in range(H):
            ig = _sigmoid(gi[j])
            fg = _sigmoid(gf[j])
            gg = _tanh(gg_[j])
            og = _sigmoid(go[j])
            cj = fg * cell[j] + ig * gg
            cell[j] = cj
            h[j] = og * _tanh(cj)  # the matvec above has used the old h already
    for k in range(ncls):
        s_ = params[bfc + k]
        wrow = params[wfc + k * H : wfc + (k + 1) * H]
        for j in range(H):
            s_ += wrow[j] * h[j]
        logits[k] = s_


@njit(fastmath=FASTMATH_APPROX_LIBM)
def _mlp_logits(head, params, bufs, st, c, hidden, logits):
    """Linear over the window's T' feature rows in order (flattened as nn.Flatten), ReLU,
    Linear."""
    nf, C, H, ncls = head[HD_NF], head[HD_C], head[HD_H], head[HD_NC]
    fb = head[HD_FEAT]
    fbase, fdepth = bufs[fb, BUF_OFF], bufs[fb, BUF_DEPTH]
    w1, b1, w2, b2 = head[HD_W1], head[HD_B1], head[HD_W2], head[HD_B2]
    hid = hidden[:H]
    bias = params[b1 : b1 + H]
    for j in range(H):
        hid[j] = bias[j]
    for s in range(nf):
        f0 = fbase + ((c + fdepth - nf + 1 + s) % fdepth) * C
        for k in range(C):
            v = st[f0 + k]
            wb = w1 + (s * C + k) * H
            wrow = params[wb : wb + H]
            for j in range(H):
                hid[j] += wrow[j] * v
    for k in range(ncls):
        s_ = params[b2 + k]
        wrow = params[w2 + k * H : w2 + (k + 1) * H]
        for j in range(H):
            s_ += wrow[j] * max(hid[j], np.float32(0.0))
        logits[k] = s_


# ---- the push kernel -----------------------------------------------------------------------


@njit(fastmath=FASTMATH_APPROX_LIBM)
def _push(params, ops, slopes, bufs, head, state, counts, ids, rows, want, out, scratch):
    """Push ``rows[i]`` to slot ``ids[i]`` for i in order; probabilities into ``out``.

    Parameters
    ----------
    params, ops, slopes, bufs, head : the program (see the module docstring); not modified.
    state : float32 (n_slots, S), modified in place (the pushed slots' rings).
    counts : int64 (n_slots,), modified in place (+1 per pushed row).
    ids : int64 (n,), each in [0, n_slots); a slot may repeat (its rows run in order).
    rows : float32 (n, F), C-contiguous; not modified.
    want : bool (n,); False skips the head for that row (its output row is NaN).
    out : float32 (n, NC), written: softmax probabilities (one softmax per head of 3 classes)
        where the slot has at least T rows since reset and ``want``, NaN elsewhere.
    scratch : float32 (>= max conv output + 6H + NC,); overwritten.
    """
    n_ops = ops.shape[0]
    F = rows.shape[1]
    T, H, ncls, kind = head[HD_T], head[HD_H], head[HD_NC], head[HD_KIND]
    d0 = bufs[0, BUF_DEPTH]
    x_base = bufs[0, BUF_OFF]
    nacc = scratch.shape[0] - 6 * H - ncls
    acc = scratch[:nacc]
    gates = scratch[nacc : nacc + 4 * H]
    hc = scratch[nacc + 4 * H : nacc + 6 * H]
    logits = scratch[nacc + 6 * H :]
    nan = np.float32(np.nan)
    for i in range(ids.shape[0]):
        s = ids[i]
        st = state[s]
        c = counts[s]
        x0 = x_base + (c % d0) * F
        for f in range(F):
            st[x0 + f] = rows[i, f]
        for j in range(n_ops):
            if ops[j, OP_KIND] == OPK_CONV:
                _conv_op(ops[j], slopes[j], params, bufs, st, c, acc)
            else:
                _tmaxpool_op(ops[j], bufs, st, c)
        if kind == HEAD_LSTM:
            _lstm_project(head, params, bufs, st, c)
        counts[s] = c + 1
        if c + 1 < T or not want[i]:
            for k in range(ncls):
                out[i, k] = nan
            continue
        if kind == HEAD_LSTM:
            _lstm_logits(head, params, st, c, gates, hc, logits)
        else:
            _mlp_logits(head, params, bufs, st, c, gates, logits)
        # one softmax per head: classes 3h .. 3h + 2 are head h's (models.heads)
        for g in range(0, ncls, 3):
            m = logits[g]
            for k in range(g + 1, g + 3):
                m = max(m, logits[k])
            tot = np.float32(0.0)
            for k in range(g, g + 3):
                e = np.float32(np.exp(logits[k] - m))
                out[i, k] = e
                tot += e
            for k in range(g, g + 3):
                out[i, k] /= tot


def push(
    params: np.ndarray,
    ops: np.ndarray,
    slopes: np.ndarray,
    bufs: np.ndarray,
    head: np.ndarray,
    state: np.ndarray,
    counts: np.ndarray,
    ids: np.ndarray,
    rows: np.ndarray,
    want: np.ndarray,
    out: np.ndarray,
    scratch: np.ndarray,
) -> None:
    """Validated-by-caller entry to ``_push`` (see there); kept thin for the hot path."""
    _push(params, ops, slopes, bufs, head, state, counts, ids, rows, want, out, scratch)
