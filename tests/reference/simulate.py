"""Trading simulation of a signal: does the prediction pay after crossing the spread and costs?

The rules, one position per instrument at a time, one share count ``quantity`` per trade:

- A row's signal is long (+1) when P(up) >= threshold and P(up) >= P(down), short (-1) when
  P(down) >= threshold and P(down) > P(up), otherwise none (0). Rows without a window (the
  first T-1 rows of an instrument) carry no signal.
- A decision taken at row ``i`` fills at the first row whose ``ts_event`` is at least
  ``ts_event[i] + latency_ns`` (row ``i`` itself when the latency is 0), at the touch of that
  row: buys at the best ask, sells at the best bid. While an order is in flight, signals are
  ignored. An order that would arrive after the last row never fills.
- A position is closed by the first of: an opposite signal (which also opens the opposite
  position at the same fill: a reversal), the horizon (``horizon`` rows, or ns of ``ts_event``,
  after the entry fill: the exit is decided there and fills after the latency like any order),
  or the end of the data (closed at the last row's touch). Signals in the direction already
  held are ignored; they do not extend the horizon.
- Costs are charged per fill: ``cost_per_share * quantity`` plus ``cost_bps`` basis points of
  the fill's notional (``quantity * price``).

Prices stay integer ticks through the kernel; money (quote currency) appears only in the
statistics, using each instrument's tick size.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from lobstream.kernels._jit import njit

logger = logging.getLogger(__name__)

EXIT_SIGNAL = 0  # opposite signal (reversal)
EXIT_HORIZON = 1  # holding horizon reached
EXIT_END = 2  # data ended with the position open
EXIT_NAMES = ("signal", "horizon", "end")

DEFAULT_SWEEP = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class TradingConfig:
    """Parameters of the simulation.

    Parameters
    ----------
    threshold : class probability a signal must reach (0..1).
    latency_ns : decision latency in ns of ``ts_event``: from the row a decision is taken on to
        the row whose touch it trades at.
    horizon : maximum holding period, in rows (``horizon_unit="events"``, one feature row per
        consistent book) or in seconds (``horizon_unit="seconds"``).
    horizon_unit : ``"events"`` or ``"seconds"``.
    cost_per_share : quote currency per share (contract) per fill.
    cost_bps : basis points of notional per fill.
    quantity : shares per trade.
    """

    threshold: float = 0.6
    latency_ns: int = 0
    horizon: float = 100
    horizon_unit: str = "events"
    cost_per_share: float = 0.0
    cost_bps: float = 0.0
    quantity: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.latency_ns < 0:
            raise ValueError(f"latency must be >= 0 ns, got {self.latency_ns}")
        if self.horizon_unit not in ("events", "seconds"):
            raise ValueError(
                f"horizon_unit must be 'events' or 'seconds', got {self.horizon_unit!r}"
            )
        if self.horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {self.horizon}")
        if self.cost_per_share < 0 or self.cost_bps < 0 or self.quantity <= 0:
            raise ValueError(
                "costs must be >= 0 and quantity > 0, got "
                f"cost_per_share={self.cost_per_share}, cost_bps={self.cost_bps}, "
                f"quantity={self.quantity}"
            )


class Trades(NamedTuple):
    """Completed round trips, one entry per trade, ordered by exit time (then instrument).

    All arrays have shape (n,). Row indices refer to the rows given to :func:`simulate`
    (for :func:`simulate_rows`, to the rows of the whole meta array).
    """

    instrument: np.ndarray  # u4
    side: np.ndarray  # i1: +1 long, -1 short
    entry_row: np.ndarray  # i8
    exit_row: np.ndarray  # i8
    entry_ts: np.ndarray  # i8 ts_event of the entry fill row
    exit_ts: np.ndarray  # i8
    entry_px: np.ndarray  # i8 ticks
    exit_px: np.ndarray  # i8 ticks
    reason: np.ndarray  # u1 EXIT_*
    gross: np.ndarray  # f8 quote currency
    costs: np.ndarray  # f8 quote currency
    net: np.ndarray  # f8 quote currency
    notional: np.ndarray  # f8 entry + exit notional, quote currency


def signals_from_probs(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Long/short/none per row from class probabilities.

    Parameters
    ----------
    probs : (n, 3) float, columns down, flat, up. Rows of NaN (no window) give no signal.
    threshold : probability a class must reach.

    Returns
    -------
    (n,) int8: +1 long, -1 short, 0 none (new array).
    """
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != 3:
        raise ValueError(f"probs must have shape (n, 3) (down, flat, up), got {probs.shape}")
    down, up = probs[:, 0], probs[:, 2]
    sig = np.zeros(len(probs), dtype=np.int8)
    sig[(up >= threshold) & (up >= down)] = 1
    sig[(down >= threshold) & (down > up)] = -1
    return sig


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
    return _price(
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


def _price(
    instrument,
    side,
    entry,
    exit_,
    entry_ts,
    exit_ts,
    entry_px,
    exit_px,
    reason,
    tick,
    config: TradingConfig,
) -> Trades:
    q = config.quantity
    gross = side * (exit_px - entry_px) * tick * q
    notional = (entry_px + exit_px) * tick * q
    costs = 2.0 * q * config.cost_per_share + config.cost_bps * 1e-4 * notional
    return Trades(
        instrument,
        side,
        entry,
        exit_,
        entry_ts,
        exit_ts,
        entry_px,
        exit_px,
        reason,
        gross.astype(np.float64),
        costs,
        gross - costs,
        notional.astype(np.float64),
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


def merge_trades(parts: Sequence[Trades]) -> Trades:
    """Concatenate trades and order them by exit time, then exit row."""
    if not parts:
        return _empty()
    cat = Trades(*(np.concatenate(cols) for cols in zip(*parts, strict=True)))
    order = np.lexsort((cat.exit_row, cat.exit_ts))
    return Trades(*(c[order] for c in cat))


def _empty() -> Trades:
    i8 = np.empty(0, np.int64)
    f8 = np.empty(0, np.float64)
    return Trades(
        np.empty(0, np.uint32),
        np.empty(0, np.int8),
        i8,
        i8,
        i8,
        i8,
        i8,
        i8,
        np.empty(0, np.uint8),
        f8,
        f8,
        f8,
        f8,
    )


def equity_curve(trades: Trades) -> tuple[np.ndarray, np.ndarray]:
    """(exit ts_event (n,) int64, cumulative net P&L (n,) float64) in exit order."""
    return trades.exit_ts, np.cumsum(trades.net)


def max_drawdown(cum_pnl: np.ndarray) -> float:
    """Largest fall of the cumulative P&L from a running peak (peak starts at 0), >= 0."""
    if len(cum_pnl) == 0:
        return 0.0
    peak = np.maximum.accumulate(np.concatenate(([0.0], cum_pnl)))
    return float(np.max(peak[1:] - cum_pnl))


def trade_stats(trades: Trades) -> dict:
    """Summary statistics of a set of trades (JSON-ready floats and ints).

    ``sharpe`` is the per-trade Sharpe ratio, mean / standard deviation (ddof=1) of net P&L per
    trade, not annualised (a single session gives no honest annualisation); 0 with fewer than
    two trades or no dispersion. ``turnover`` is the traded notional (both fills) in quote
    currency; ``hit_rate`` the fraction of trades with positive net P&L.
    """
    n = len(trades.net)
    net = trades.net
    std = float(np.std(net, ddof=1)) if n > 1 else 0.0
    reasons = {name: int(np.sum(trades.reason == code)) for code, name in enumerate(EXIT_NAMES)}
    return {
        "n_trades": n,
        "n_long": int(np.sum(trades.side > 0)),
        "n_short": int(np.sum(trades.side < 0)),
        "gross_pnl": float(np.sum(trades.gross)),
        "costs": float(np.sum(trades.costs)),
        "net_pnl": float(np.sum(net)),
        "mean_pnl_per_trade": float(np.mean(net)) if n else 0.0,
        "hit_rate": float(np.mean(net > 0)) if n else 0.0,
        "turnover": float(np.sum(trades.notional)),
        "sharpe": float(np.mean(net) / std) if std > 0 else 0.0,
        "max_drawdown": max_drawdown(np.cumsum(net)),
        "exits": reasons,
    }


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
