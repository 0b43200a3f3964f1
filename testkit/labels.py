"""Slow, obviously-right mid-price labels (the conventions of kernels/labels.py)."""

from __future__ import annotations

import math

import numpy as np


def change_events(mid, k):
    m = len(mid)
    out = np.full(m, np.nan)
    for t in range(m):
        if t - k + 1 >= 0 and t + k <= m - 1:
            past = sum(mid[t - k + 1 : t + 1]) / k
            fut = sum(mid[t + 1 : t + k + 1]) / k
            out[t] = (fut - past) / past
    return out


def change_time(mid, ts, h):
    m = len(mid)
    out = np.full(m, np.nan)
    for t in range(m):
        past_full = any(ts[j] <= ts[t] - h for j in range(t + 1))
        fut_full = any(ts[j] > ts[t] + h for j in range(t + 1, m))
        past = [mid[j] for j in range(t + 1) if ts[j] > ts[t] - h]
        fut = [mid[j] for j in range(t + 1, m) if ts[j] <= ts[t] + h]
        if past_full and fut_full and fut:
            p = sum(past) / len(past)
            out[t] = (sum(fut) / len(fut) - p) / p
    return out


def future_events(mid, k):
    """Kind "future": (mean of mids t+1..t+k - mid_t) / mid_t; needs k rows after t only."""
    m = len(mid)
    out = np.full(m, np.nan)
    for t in range(m):
        if t + k <= m - 1:
            fut = sum(mid[t + 1 : t + k + 1]) / k
            out[t] = (fut - mid[t]) / mid[t]
    return out


def future_time(mid, ts, h):
    """Kind "future" by time: rows in (ts_t, ts_t + h]; needs a row after ts_t + h."""
    m = len(mid)
    out = np.full(m, np.nan)
    for t in range(m):
        fut_full = any(ts[j] > ts[t] + h for j in range(t + 1, m))
        fut = [mid[j] for j in range(t + 1, m) if ts[j] <= ts[t] + h]
        if fut_full and fut:
            out[t] = (sum(fut) / len(fut) - mid[t]) / mid[t]
    return out


def spread_alpha(bid, ask):
    rel = [(a - b) / ((a + b) / 2) for b, a in zip(bid, ask, strict=True)]
    return sum(rel) / len(rel)


def trend_signal(mid_window, k):
    """(mid_t - mean of the last k mids incl. t) / that mean, of one window's mids."""
    last = list(mid_window[-k:])
    mean = sum(last) / len(last)
    return (mid_window[-1] - mean) / mean


def classify(change, alpha):
    out = np.empty(len(change), dtype=np.int8)
    for i, c in enumerate(change):
        if math.isnan(c):
            out[i] = -1
        elif c > alpha:
            out[i] = 2
        elif c < -alpha:
            out[i] = 0
        else:
            out[i] = 1
    return out
