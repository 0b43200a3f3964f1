"""Numba kernel of the BiN-CTABL forward pass, for CPU inference without torch.

:mod:`lobstream.models.binctabl.compiled` turns a trained
:class:`~lobstream.models.binctabl.model.BiNCTABL` into the tuple of float32 arrays below (the
mixing weights, clamps and the pinned attention diagonal already applied) and calls
:func:`binctabl_forward` on the runner's input buffer.

Why a kernel: a batch-1 torch call of this model is ~35 small operators, each through the
dispatcher; on a quiet market that code and its allocator state leave the caches between
messages, and the call costs several times its back-to-back time (bench/inference.py,
bench.daemon).
One compiled loop nest touches a few hundred kB of code and weights instead.

The arithmetic is the module's, in the module's order where it matters: centring before
squaring (BiN), the time map before the feature map (bilinear layers). BiN's means and spreads
are float64, the rest float32, so probabilities match the module run in float64 to ~1e-7 where
torch's float32 call can differ by 1e-3 (tests/test_compiled.py).

Parameters (``params``), for F features over T steps and hidden sizes (H1, K1), (H2, K2):

- ``g_t`` (F,), ``g_f`` (T,): BiN's gammas times its clamped mixing weights;
  ``shift`` (T, F): its betas mixed the same way.
- ``w2a`` (K1, T), ``w1a`` (H1, F), ``b1`` (H1, K1): first bilinear layer (``w2a`` = W2ᵀ).
- ``w2b`` (K1, K2), ``w1b`` (H2, H1), ``b2`` (H2, K2): second bilinear layer.
- ``watt`` (K2, K2): TABL's attention weights with the diagonal at 1/K2; ``lam`` (1,): its
  clamped lambda; ``w1c`` (C, H2), ``w2c`` (K2,), ``bc`` (C,): its maps; C = 3 x heads.
- ``eps`` (1,): BiN's epsilon.
"""

from __future__ import annotations

import numpy as np

from lobstream.kernels._jit import FASTMATH_EXACT_LIBM, njit

N_CLASSES = 3  # per head: down, flat, up


def scratch_sizes(T: int, F: int, params: tuple) -> tuple[int, int]:
    """Elements of the float32 and the float64 scratch buffers :func:`binctabl_forward` needs
    for windows of T steps by F features and these ``params``."""
    b1, b2, w1c = params[5], params[8], params[11]  # the order binctabl_forward unpacks
    (H1, K1), (H2, K2), C = b1.shape, b2.shape, w1c.shape[0]
    return F + K1 * F + H1 * K1 + K2 * H1 + H2 * K2 + C * K2 + K2 + C, 2 * F + 2 * T


@njit(fastmath=FASTMATH_EXACT_LIBM)
def _bin_stats(w, mt, st, mf, sf, g_t, g_f, eps):
    # Means first, then squared deviations from them, in float64: a quarter of the bundled
    # day's windows hold a column (a deep level's price) constant or nearly so, and BiN divides
    # its deviations by a spread of ~eps, so float32 round-off in the mean would be amplified
    # ~1e5-fold into the output (torch's float32 pass errs up to 1e-3 in probability there).
    T, F = w.shape
    mt[:] = 0.0
    for t in range(T):
        s = 0.0
        for d in range(F):
            v = w[t, d]
            mt[d] += v
            s += v
        mf[t] = s / F
    for d in range(F):
        mt[d] /= T
    st[:] = 0.0
    for t in range(T):
        m = mf[t]
        q = 0.0
        for d in range(F):
            v = np.float64(w[t, d])
            e = v - mt[d]
            st[d] += e * e
            e = v - m
            q += e * e
        sf[t] = g_f[t] / (np.sqrt(q / F) + eps)
    for d in range(F):
        st[d] = g_t[d] / (np.sqrt(st[d] / T) + eps)


@njit(fastmath=FASTMATH_EXACT_LIBM)
def _bin_time_map(w, mt, st, mf, sf, shift, w2a, y, a):
    # a = BiN(x) @ W2 with BiN's output made one step at a time (y), never stored whole
    T, F = w.shape
    a[:] = 0.0
    for t in range(T):
        m, s = mf[t], sf[t]
        for d in range(F):
            v = np.float64(w[t, d])
            y[d] = shift[t, d] + (v - mt[d]) * st[d] + (v - m) * s
        for j in range(a.shape[0]):
            c = w2a[j, t]
            for d in range(F):
                a[j, d] += c * y[d]


@njit(fastmath=FASTMATH_EXACT_LIBM)
def _feature_map_relu(w1, at, bias, out):
    # out[i, j] = relu(sum_k w1[i, k] at[j, k] + bias[i, j]): rows of w1 against rows of at
    for i in range(w1.shape[0]):
        for j in range(at.shape[0]):
            s = np.float32(0.0)
            for k in range(w1.shape[1]):
                s += w1[i, k] * at[j, k]
            v = s + bias[i, j]
            out[i, j] = np.float32(0.0) if v <= 0 else v  # NaN stays NaN, as in torch


@njit(fastmath=FASTMATH_EXACT_LIBM)
def _tabl(h, w1c, watt, lam, w2c, bc, x1, sc, logits):
    C, H = w1c.shape
    K = watt.shape[0]
    for c in range(C):
        for j in range(K):
            s = np.float32(0.0)
            for i in range(H):
                s += w1c[c, i] * h[i, j]
            x1[c, j] = s
    for c in range(C):
        mx = -np.inf
        for j in range(K):
            s = np.float32(0.0)
            for k in range(K):
                s += x1[c, k] * watt[k, j]
            sc[j] = s
            mx = max(mx, s)
        z = np.float32(0.0)
        for j in range(K):
            sc[j] = np.exp(sc[j] - mx)
            z += sc[j]
        o = np.float32(0.0)
        for j in range(K):
            v = x1[c, j]
            o += (lam * v + (1 - lam) * v * (sc[j] / z)) * w2c[j]
        logits[c] = o + bc[c]


@njit(fastmath=FASTMATH_EXACT_LIBM)
def _softmax_heads(logits, out):
    for h0 in range(0, logits.shape[0], N_CLASSES):
        mx = logits[h0]
        for c in range(1, N_CLASSES):
            mx = max(mx, logits[h0 + c])
        z = np.float32(0.0)
        for c in range(N_CLASSES):
            e = np.exp(logits[h0 + c] - mx)
            out[h0 + c] = e
            z += e
        for c in range(N_CLASSES):
            out[h0 + c] /= z


@njit(fastmath=FASTMATH_EXACT_LIBM)
def binctabl_forward(x, n, out, params, scratch, scratch64):
    """Class probabilities of windows ``x[:n]`` (B, 1, T, F) float32 into ``out[:n]`` (B, C).

    ``out[b]`` holds each head's three probabilities in turn (C = 3 x heads). ``scratch``
    float32 and ``scratch64`` float64, of at least :func:`scratch_sizes` elements; nothing is
    allocated.
    """
    g_t, g_f, shift, w2a, w1a, b1, w2b, w1b, b2, watt, lam, w1c, w2c, bc, eps = params
    T, F = x.shape[2], x.shape[3]
    H1, K1 = b1.shape
    H2, K2 = b2.shape
    C = w1c.shape[0]
    mt = scratch64[:F]
    st = scratch64[F : 2 * F]
    mf = scratch64[2 * F : 2 * F + T]
    sf = scratch64[2 * F + T : 2 * F + 2 * T]
    o = 0
    y = scratch[o : o + F]
    o += F
    a = scratch[o : o + K1 * F].reshape((K1, F))
    o += K1 * F
    h1 = scratch[o : o + H1 * K1].reshape((H1, K1))
    o += H1 * K1
    h1t = scratch[o : o + K2 * H1].reshape((K2, H1))
    o += K2 * H1
    h2 = scratch[o : o + H2 * K2].reshape((H2, K2))
    o += H2 * K2
    x1 = scratch[o : o + C * K2].reshape((C, K2))
    o += C * K2
    sc = scratch[o : o + K2]
    o += K2
    logits = scratch[o : o + C]
    for b in range(n):
        w = x[b, 0]
        _bin_stats(w, mt, st, mf, sf, g_t, g_f, eps[0])
        _bin_time_map(w, mt, st, mf, sf, shift, w2a, y, a)
        _feature_map_relu(w1a, a, b1, h1)  # (H1, K1)
        for j in range(K2):  # h1 @ W2, kept transposed for the next feature map
            for i in range(H1):
                s = np.float32(0.0)
                for k in range(K1):
                    s += h1[i, k] * w2b[k, j]
                h1t[j, i] = s
        _feature_map_relu(w1b, h1t, b2, h2)  # (H2, K2)
        _tabl(h2, w1c, watt, lam[0], w2c, bc, x1, sc, logits)
        _softmax_heads(logits, out[b])
