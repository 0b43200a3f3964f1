"""The array trading simulator: every row at once, looking ahead for fills and due rows.

The oracle of :class:`lobstream.replay.backtest.trading.StreamingTrader` (the rules are in
that module's docstring): the same trades, in the same order, for the same rows. Only tests
and the per-row reference backtest (:mod:`lobstream.testkit.backtest`) use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from lobstream.kernels._jit import njit
from lobstream.replay.backtest.trading import (
    DEFAULT_SWEEP,
    Trades,
    TradingConfig,
    merge_trades,
    price_trades,
    signals_from_probs,
    trade_stats,
)


@njit
def _simulate(signal, fill_idx, horizon_idx, side_out, entry_out, exit_out, reason_out):
    """State machine over one instrument's rows; returns the number of trades written.

    ``fill_idx[i]`` is the row a decision at row ``i`` fills at (>= n: never), and
    ``horizon_idx[j]`` the row where a position filled at row ``j`` is due to close.
    """
    n = signal.shape[0]
    k = 0
    i = 0
    reason = 0
    fill = 0
    while i < n:
        if signal[i] == 0:
            i += 1
            continue
        side = signal[i]
        entry = fill_idx[i]
        if entry >= n:
            break
        while True:
            due = horizon_idx[entry]
            m = entry + 1
            while m < n and m < due and signal[m] != -side:
                m += 1
            if m < n and m < due:
                reason = 0
                fill = fill_idx[m]
            elif due < n:
                reason = 1
                fill = fill_idx[due]
            else:
                reason = 2
                fill = n - 1
            if fill >= n:
                reason = 2
                fill = n - 1
            side_out[k] = side
            entry_out[k] = entry
            exit_out[k] = fill
            reason_out[k] = reason
            k += 1
            if reason == 0 and fill > entry:
                side = -side
                entry = fill
                continue
            break
        if reason == 2:
            break
        i = fill + 1
    return k


def simulate(
    signal: np.ndarray,
    ts_event: np.ndarray,
    best_bid: np.ndarray,
    best_ask: np.ndarray,
    config: TradingConfig,
    *,
    tick_size: float = 1.0,
    instrument: int = 0,
) -> Trades:
    """Simulate one instrument's signal over its rows.

    Parameters
    ----------
    signal : (n,) int8, +1/-1/0 per row (see :func:`signals_from_probs`).
    ts_event : (n,) int64 ns, non-decreasing.
    best_bid, best_ask : (n,) int64 ticks, the touch at each row.
    config : the rules' parameters.
    tick_size : quote currency per tick, for money figures.
    instrument : id recorded in the trades.

    Returns
    -------
    Trades, ordered by entry. Inputs are not modified.
    """
    signal = np.ascontiguousarray(signal, dtype=np.int8)
    ts = np.ascontiguousarray(ts_event, dtype=np.int64)
    bid = np.ascontiguousarray(best_bid, dtype=np.int64)
    ask = np.ascontiguousarray(best_ask, dtype=np.int64)
    n = len(signal)
    if not (len(ts) == len(bid) == len(ask) == n):
        raise ValueError(
            f"signal, ts_event, best_bid, best_ask must have one length, got "
            f"{n}, {len(ts)}, {len(bid)}, {len(ask)}"
        )
    if n > 1 and np.any(np.diff(ts) < 0):
        bad = int(np.argmax(np.diff(ts) < 0)) + 1
        raise ValueError(
            f"ts_event goes backwards at row {bad} ({ts[bad - 1]} -> {ts[bad]}); the "
            "simulation needs each instrument's rows in time order"
        )
    if config.latency_ns == 0:
        fill_idx = np.arange(n, dtype=np.int64)
    else:
        fill_idx = np.searchsorted(ts, ts + np.int64(config.latency_ns), side="left")
        fill_idx = fill_idx.astype(np.int64)
    if config.horizon_unit == "events":
        horizon_idx = np.arange(n, dtype=np.int64) + max(1, int(round(config.horizon)))
    else:
        h_ns = np.int64(round(config.horizon * 1e9))
        horizon_idx = np.searchsorted(ts, ts + h_ns, side="left").astype(np.int64)
        horizon_idx = np.maximum(horizon_idx, np.arange(1, n + 1, dtype=np.int64))
    side = np.empty(n, np.int8)
    entry = np.empty(n, np.int64)
    exit_ = np.empty(n, np.int64)
    reason = np.empty(n, np.uint8)
    k = _simulate(signal, fill_idx, horizon_idx, side, entry, exit_, reason)
    side, entry, exit_, reason = side[:k], entry[:k], exit_[:k], reason[:k]
    entry_px = np.where(side > 0, ask[entry], bid[entry])
    exit_px = np.where(side > 0, bid[exit_], ask[exit_])
    return price_trades(
        np.full(k, instrument, np.uint32),
        side,
        entry,
        exit_,
        ts[entry],
        ts[exit_],
        entry_px,
        exit_px,
        reason,
        np.full(k, float(tick_size)),
        config,
    )


def simulate_rows(
    signal: np.ndarray,
    meta: np.ndarray,
    config: TradingConfig,
    tick_sizes: Mapping[int, float] | Sequence[float] | None = None,
) -> Trades:
    """Simulate every instrument found in ``meta`` and merge the trades by exit time.

    Parameters
    ----------
    signal : (n,) int8, one per row of ``meta``.
    meta : (n,) ROW_META_DTYPE, rows of any number of instruments in arrival order.
    config : the rules' parameters.
    tick_sizes : quote currency per tick by instrument id (default 1.0: P&L in ticks).

    Returns
    -------
    Trades with row indices into ``meta``, ordered by exit time.
    """
    if len(signal) != len(meta):
        raise ValueError(f"one signal per row expected: {len(signal)} signals, {len(meta)} rows")
    inst = meta["instrument"]
    parts = []
    for i in np.unique(inst):
        rows = np.flatnonzero(inst == i)
        tick = 1.0 if tick_sizes is None else float(tick_sizes[int(i)])
        t = simulate(
            signal[rows],
            meta["ts_event"][rows],
            meta["best_bid"][rows],
            meta["best_ask"][rows],
            config,
            tick_size=tick,
            instrument=int(i),
        )
        parts.append(t._replace(entry_row=rows[t.entry_row], exit_row=rows[t.exit_row]))
    return merge_trades(parts)


def threshold_sweep(
    probs: np.ndarray,
    meta: np.ndarray,
    config: TradingConfig,
    thresholds: Sequence[float] = DEFAULT_SWEEP,
    tick_sizes: Mapping[int, float] | Sequence[float] | None = None,
) -> list[dict]:
    """:func:`trade_stats` of the simulation at each threshold (other parameters as ``config``).

    Parameters
    ----------
    probs : (n, 3) float, one per row of ``meta`` (NaN rows: no window, no signal).
    meta : (n,) ROW_META_DTYPE.
    """
    out = []
    for thr in thresholds:
        cfg = replace(config, threshold=float(thr))
        trades = simulate_rows(signals_from_probs(probs, cfg.threshold), meta, cfg, tick_sizes)
        out.append({"threshold": float(thr), **trade_stats(trades)})
    return out
