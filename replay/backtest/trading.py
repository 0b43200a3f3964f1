"""Trading simulation of a signal, run on rows as they arrive: does the prediction pay after
crossing the spread and costs?

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
The rules run as a state machine per (threshold, instrument) that waits instead of looking
ahead (:mod:`lobstream.kernels.trading`): a decision leaves an order in flight, and each later
row of the instrument is checked against the order's fill time, the position's due row or time,
and the signal. The state is a few integers per (threshold, instrument), so every sweep
threshold is simulated in the same pass over the rows; no row is kept.

States: flat (looking for a signal), entry in flight, holding, exit in flight. A fill ends the
row's turn (a reversal holds from the next row; after a horizon exit the next signal is looked
for from the next row on). At the end of the data an open position, or one whose exit is in
flight, closes at the instrument's last row (``EXIT_END``); an entry still in flight never
fills.

Completed trades are kept (in ticks; a trade is 80 bytes and there are far fewer trades than
rows). ``testkit/simulate.py`` is the array simulator these trades are checked against,
trade for trade and in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from lobstream.kernels.trading import (
    C_ENTRY_PX,
    C_ENTRY_ROW,
    C_ENTRY_TS,
    C_EXIT_PX,
    C_EXIT_ROW,
    C_EXIT_TS,
    C_INST,
    C_REASON,
    C_SIDE,
    C_THR,
    EXIT_NAMES,
    L_COUNT,
    L_ROW,
    L_TS,
    N_COLS,
    N_LAST,
    N_STATE,
    close_all,
    trade_rows,
)
from lobstream.models.manifest import kernel_horizon, label_def_from_manifest

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

    All arrays have shape (n,). Row indices number the rows of the whole stream given to the
    simulation.
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


def price_trades(
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
    """Trades from their ticks: gross, costs, net and notional in quote currency (``tick``
    per trade), by ``config``'s quantity and costs."""
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


def merge_trades(parts: Sequence[Trades]) -> Trades:
    """Concatenate trades and order them by exit time, then exit row."""
    if not parts:
        return empty_trades()
    cat = Trades(*(np.concatenate(cols) for cols in zip(*parts, strict=True)))
    order = np.lexsort((cat.exit_row, cat.exit_ts))
    return Trades(*(c[order] for c in cat))


def empty_trades() -> Trades:
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


class StreamingTrader:
    """The trading simulation at several thresholds, chunk by chunk.

    Parameters
    ----------
    config : the rules (latency, horizon, costs); its threshold is not used here.
    thresholds : (n_thr,) class-probability thresholds simulated side by side.
    n_instruments : instrument ids expected (the state grows if larger ids appear).
    buffer_trades : trades a kernel call may write before they are moved to the kept list.
    """

    def __init__(
        self,
        config: TradingConfig,
        thresholds: Sequence[float],
        n_instruments: int = 1,
        buffer_trades: int = 4096,
    ) -> None:
        if not len(thresholds):
            raise ValueError("at least one threshold is needed, got none")
        self.config = config
        self.thresholds = tuple(float(t) for t in thresholds)
        self._lat = np.int64(config.latency_ns)
        h, unit = kernel_horizon(config.horizon, config.horizon_unit)
        self._h_rows, self._h_ns = (h, np.int64(0)) if unit == "events" else (0, np.int64(h))
        n = max(1, int(n_instruments))
        self._state = np.zeros((len(self.thresholds), n, N_STATE), np.int64)
        self._last = np.zeros((n, N_LAST), np.int64)
        self._out = np.empty((max(buffer_trades, len(self.thresholds)), N_COLS), np.int64)
        self._kept: list[np.ndarray] = []
        self.n_rows = 0
        self._closed = False

    def add(self, meta: np.ndarray, probs: np.ndarray) -> None:
        """Advance the simulations over a chunk of rows.

        Parameters
        ----------
        meta : (m,) ROW_META_DTYPE, the next rows of the stream (any instruments, arrival
            order; each instrument's ``ts_event`` non-decreasing). Not modified.
        probs : (m, 3) float, down/flat/up per row; NaN rows (no window) give no signal.
        """
        if self._closed:
            raise RuntimeError("StreamingTrader.add after finish(): start a new trader")
        m = len(meta)
        if len(probs) != m:
            raise ValueError(f"one probability row per row expected: {len(probs)} for {m} rows")
        if m == 0:
            return
        inst = np.ascontiguousarray(meta["instrument"], np.int64)
        top = int(inst.max())
        if top >= self._last.shape[0]:
            self._grow(top + 1)
        ts = np.ascontiguousarray(meta["ts_event"], np.int64)
        self._check_time(inst, ts)
        sig = np.stack([signals_from_probs(probs, t) for t in self.thresholds])
        bid = np.ascontiguousarray(meta["best_bid"], np.int64)
        ask = np.ascontiguousarray(meta["best_ask"], np.int64)
        j = 0
        while j < m:
            j, k = trade_rows(
                j,
                inst,
                ts,
                bid,
                ask,
                sig,
                np.int64(self.n_rows),
                self._lat,
                self._h_rows,
                self._h_ns,
                self._state,
                self._last,
                self._out,
            )
            if k:
                self._kept.append(self._out[:k].copy())
        self.n_rows += m

    def finish(self) -> None:
        """End of the data: close what is open (``EXIT_END``). Further ``add`` calls refuse."""
        if self._closed:
            return
        out = np.empty((self._state.shape[0] * self._state.shape[1], N_COLS), np.int64)
        k = close_all(self._state, self._last, out)
        if k:
            self._kept.append(out[:k])
        # one array from here on: trades() selects from it without joining the pieces again
        self._kept = [np.concatenate(self._kept)] if self._kept else []
        self._closed = True

    @property
    def instruments(self) -> np.ndarray:
        """(n,) sorted ids of the instruments that had rows."""
        return np.flatnonzero(self._last[:, L_COUNT] > 0)

    def trades(
        self, k: int, tick_sizes: Mapping[int, float] | Sequence[float] | None = None
    ) -> Trades:
        """Trades of threshold ``self.thresholds[k]``, priced, ordered by exit time.

        Parameters
        ----------
        k : index into ``thresholds``.
        tick_sizes : quote currency per tick by instrument id (default 1.0: P&L in ticks).
        """
        if not self._closed:
            raise RuntimeError("trades() before finish(): positions still open")
        rec = self._kept[0] if self._kept else np.empty((0, N_COLS), np.int64)
        rec = rec[rec[:, C_THR] == k]
        if len(rec) == 0:
            return empty_trades()
        inst = rec[:, C_INST].astype(np.uint32)
        if tick_sizes is None:
            tick = np.ones(len(rec))
        else:
            table = {int(i): float(tick_sizes[int(i)]) for i in np.unique(inst)}
            tick = np.array([table[int(i)] for i in inst], np.float64)
        cfg = replace(self.config, threshold=self.thresholds[k])
        t = price_trades(
            inst,
            rec[:, C_SIDE].astype(np.int8),
            rec[:, C_ENTRY_ROW].copy(),
            rec[:, C_EXIT_ROW].copy(),
            rec[:, C_ENTRY_TS].copy(),
            rec[:, C_EXIT_TS].copy(),
            rec[:, C_ENTRY_PX].copy(),
            rec[:, C_EXIT_PX].copy(),
            rec[:, C_REASON].astype(np.uint8),
            tick,
            cfg,
        )
        return merge_trades([t])

    def merge(self, other: StreamingTrader) -> StreamingTrader:
        """Add the trades of ``other`` (finished, same thresholds and rules, instruments
        disjoint from this one's) to this finished trader, in place; returns ``self``.

        :meth:`trades` orders by exit time, then exit row, so merged trades come out in the
        order one trader fed both streams gives, whatever the order of the merges, once both
        number their rows as that stream does (:meth:`remap_rows`): trades with equal keys
        belong to one instrument, whose trades all come from one part in their own order."""
        if not (self._closed and other._closed):
            raise RuntimeError("merge() needs finished traders: call finish() on both first")
        if (self.thresholds, self.config) != (other.thresholds, other.config):
            raise ValueError(
                f"merge() of traders with different thresholds or rules: {self.thresholds} "
                f"{self.config} vs {other.thresholds} {other.config}"
            )
        both = np.intersect1d(self.instruments, other.instruments)
        if len(both):
            raise ValueError(
                f"merge() of traders that both saw instrument(s) {both.tolist()}: an "
                "instrument's stream must be simulated in one piece"
            )
        n = max(self._last.shape[0], other._last.shape[0])
        if n > self._last.shape[0]:
            self._grow(n)
        theirs = other.instruments
        self._last[theirs] = other._last[theirs]
        self._state[:, theirs] = other._state[:, theirs]
        parts = self._kept + other._kept
        self._kept = [np.concatenate(parts)] if parts else []
        self.n_rows += other.n_rows
        return self

    def remap_rows(self, local_starts: Sequence[int], global_starts: Sequence[int]) -> None:
        """Renumber rows segment by segment: rows ``local_starts[j]`` up to the next local start
        become rows ``global_starts[j]`` on (``local_starts`` increasing, the first 0). For a
        trader that saw some files of a longer stream: its rows' numbers in that stream."""
        loc = np.asarray(local_starts, np.int64)
        glo = np.asarray(global_starts, np.int64)
        if len(loc) != len(glo) or not len(loc) or loc[0] != 0 or (np.diff(loc) < 0).any():
            raise ValueError(
                f"remap_rows: local starts {loc.tolist()} must begin at 0, not decrease and "
                f"match the global starts {glo.tolist()} one to one"
            )

        def remap(rows: np.ndarray) -> np.ndarray:
            k = np.searchsorted(loc, rows, side="right") - 1
            return rows - loc[k] + glo[k]

        for rec in self._kept:
            rec[:, C_ENTRY_ROW] = remap(rec[:, C_ENTRY_ROW])
            rec[:, C_EXIT_ROW] = remap(rec[:, C_EXIT_ROW])
        seen = self._last[:, L_COUNT] > 0
        self._last[seen, L_ROW] = remap(self._last[seen, L_ROW])

    def _grow(self, n: int) -> None:
        state = np.zeros((self._state.shape[0], n, N_STATE), np.int64)
        state[:, : self._state.shape[1]] = self._state
        last = np.zeros((n, N_LAST), np.int64)
        last[: len(self._last)] = self._last
        self._state, self._last = state, last

    def _check_time(self, inst: np.ndarray, ts: np.ndarray) -> None:
        # each instrument's rows in time order, across chunks too: fill and due times compare
        # ts_event, which means nothing out of order
        prev = np.where(self._last[inst, L_COUNT] > 0, self._last[inst, L_TS], ts)
        order = np.lexsort((np.arange(len(inst)), inst))
        s_inst, s_ts = inst[order], ts[order]
        back = np.zeros(len(ts), bool)
        back[1:] = (s_inst[1:] == s_inst[:-1]) & (s_ts[1:] < s_ts[:-1])
        first = np.ones(len(ts), bool)
        first[1:] = s_inst[1:] != s_inst[:-1]
        back |= first & (s_ts < prev[order])
        if back.any():
            j = int(order[np.argmax(back)])
            raise ValueError(
                f"ts_event goes backwards for instrument {int(inst[j])} at row "
                f"{self.n_rows + j} ({ts[j]}); the simulation needs each instrument's rows in "
                "time order"
            )


def label_horizon(manifest: dict) -> dict:
    """``horizon`` and ``horizon_unit`` of a :class:`TradingConfig` holding for the label
    horizon of ``manifest`` (a head manifest for one head of a multi-horizon artifact)."""
    label = label_def_from_manifest(manifest)
    return {"horizon": label.horizon, "horizon_unit": label.unit}


def trading_config_for(manifest: dict, **overrides) -> TradingConfig:
    """A :class:`TradingConfig` whose holding horizon is the artifact's label horizon;
    overrides of None are left out (the defaults stand)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return TradingConfig(**{**label_horizon(manifest), **given})
