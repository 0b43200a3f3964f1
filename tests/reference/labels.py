"""Slow, obviously-right smoothed mid-price labels (the convention of kernels/labels.py)."""

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
