"""The trading simulation of :mod:`lobstream.replay.backtest.simulate`, run on rows as they arrive.

:func:`~lobstream.replay.backtest.simulate.simulate_rows` needs every row at once: it looks ahead for the
row a decision fills at (``ts_event + latency``) and for the row where the horizon is due.
Here the same rules run as a state machine per (threshold, instrument) that waits instead of
looking ahead: a decision leaves an order in flight, and each later row of the instrument is
checked against the order's fill time, the position's due row or time, and the signal. The
state is a few integers per (threshold, instrument), so every sweep threshold is simulated in
the same pass over the rows; no row is kept.

States: flat (looking for a signal), entry in flight, holding, exit in flight. A fill ends the
row's turn, exactly as the array kernel resumes after a fill row (a reversal holds from the
next row; after a horizon exit the next signal is looked for from the next row on). At the end
of the data an open position, or one whose exit is in flight, closes at the instrument's last
row (``EXIT_END``); an entry still in flight never fills.

Completed trades are kept (in ticks; a trade is 80 bytes and there are far fewer trades than
rows), so :meth:`StreamingTrader.trades` returns the very ``Trades`` that ``simulate_rows``
returns for the same rows and threshold, in the same order, and ``trade_stats`` of them is the
same to the last bit.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from lobstream.kernels._jit import njit
from lobstream.replay.backtest.simulate import (
    EXIT_END,
    EXIT_HORIZON,
    EXIT_SIGNAL,
    Trades,
    TradingConfig,
    _empty,
    _price,
    merge_trades,
    signals_from_probs,
)

logger = logging.getLogger(__name__)

_FLAT, _ENTRY_WAIT, _HOLD, _EXIT_WAIT = 0, 1, 2, 3
# columns of the int64 trade records
_C_THR, _C_INST, _C_SIDE, _C_REASON = 0, 1, 2, 3
_C_ENTRY_ROW, _C_EXIT_ROW, _C_ENTRY_TS, _C_EXIT_TS, _C_ENTRY_PX, _C_EXIT_PX = 4, 5, 6, 7, 8, 9
_N_COLS = 10
# per (threshold, instrument) state columns
_S_STATE, _S_SIDE, _S_TARGET, _S_REASON, _S_ENTRY_ROW, _S_ENTRY_TS, _S_ENTRY_PX, _S_ENTRY_K = (
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
)
_N_STATE = 8
# per instrument: rows seen, and the global row, ts, bid, ask of its last row
_L_COUNT, _L_ROW, _L_TS, _L_BID, _L_ASK = 0, 1, 2, 3, 4
_N_LAST = 5


@njit
def _enter(st, side, row, ts, bid, ask, k):
    st[_S_SIDE] = side
    st[_S_ENTRY_ROW] = row
    st[_S_ENTRY_TS] = ts
    st[_S_ENTRY_PX] = ask if side > 0 else bid
    st[_S_ENTRY_K] = k
    st[_S_STATE] = _HOLD


@njit
def _record(out, k, thr, inst, st, row, ts, px, reason):
    out[k, _C_THR] = thr
    out[k, _C_INST] = inst
    out[k, _C_SIDE] = st[_S_SIDE]
    out[k, _C_REASON] = reason
    out[k, _C_ENTRY_ROW] = st[_S_ENTRY_ROW]
    out[k, _C_EXIT_ROW] = row
    out[k, _C_ENTRY_TS] = st[_S_ENTRY_TS]
    out[k, _C_EXIT_TS] = ts
    out[k, _C_ENTRY_PX] = st[_S_ENTRY_PX]
    out[k, _C_EXIT_PX] = px


@njit
def _trade_rows(start, inst, ts, bid, ask, sig, first_row, lat, h_rows, h_ns, state, last, out):
    """Advance every (threshold, instrument) machine over rows ``start..`` of a chunk.

    ``sig`` (n_thr, m) int8; ``state`` (n_thr, n_inst, _N_STATE) and ``last`` (n_inst, _N_LAST)
    int64 are updated in place; trades go to ``out`` (cap, _N_COLS). Returns (next row, trades
    written): the kernel stops early, before a row, when ``out`` might not hold its trades.
    """
    n_thr = sig.shape[0]
    cap = out.shape[0]
    k = 0
    m = inst.shape[0]
    for j in range(start, m):
        if k + n_thr > cap:
            return j, k
        i = inst[j]
        row = first_row + j
        c = last[i, _L_COUNT]
        for t in range(n_thr):
            st = state[t, i]
            s = st[_S_STATE]
            if s == _FLAT:
                if sig[t, j] == 0:
                    continue
                st[_S_SIDE] = sig[t, j]
                st[_S_TARGET] = ts[j] + lat
                s = _ENTRY_WAIT
            elif s == _HOLD:
                if h_rows > 0:
                    due = c >= st[_S_ENTRY_K] + h_rows
                else:
                    due = ts[j] >= st[_S_ENTRY_TS] + h_ns
                if due:
                    st[_S_REASON] = EXIT_HORIZON
                elif sig[t, j] == -st[_S_SIDE]:
                    st[_S_REASON] = EXIT_SIGNAL
                else:
                    continue
                st[_S_TARGET] = ts[j] + lat
                s = _EXIT_WAIT
            st[_S_STATE] = s
            if ts[j] < st[_S_TARGET]:
                continue  # the order is still in flight
            if s == _ENTRY_WAIT:
                _enter(st, st[_S_SIDE], row, ts[j], bid[j], ask[j], c)
            elif s == _EXIT_WAIT:
                px = bid[j] if st[_S_SIDE] > 0 else ask[j]
                _record(out, k, t, i, st, row, ts[j], px, st[_S_REASON])
                k += 1
                if st[_S_REASON] == EXIT_SIGNAL:
                    _enter(st, -st[_S_SIDE], row, ts[j], bid[j], ask[j], c)
                else:
                    st[_S_STATE] = _FLAT
        last[i, _L_COUNT] = c + 1
        last[i, _L_ROW] = row
        last[i, _L_TS] = ts[j]
        last[i, _L_BID] = bid[j]
        last[i, _L_ASK] = ask[j]
    return m, k


@njit
def _close_all(state, last, out):
    """End of data: open positions and exits in flight close at their instrument's last row."""
    k = 0
    for t in range(state.shape[0]):
        for i in range(state.shape[1]):
            st = state[t, i]
            if last[i, _L_COUNT] == 0:
                continue
            if st[_S_STATE] == _HOLD or st[_S_STATE] == _EXIT_WAIT:
                px = last[i, _L_BID] if st[_S_SIDE] > 0 else last[i, _L_ASK]
                _record(out, k, t, i, st, last[i, _L_ROW], last[i, _L_TS], px, EXIT_END)
                k += 1
            st[_S_STATE] = _FLAT
    return k


class StreamingTrader:
    """:func:`~lobstream.replay.backtest.simulate.simulate_rows` at several thresholds, chunk by chunk.

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
        if config.horizon_unit == "events":
            # the array path's rounding, so the due row is the same
            self._h_rows, self._h_ns = max(1, int(round(config.horizon))), np.int64(0)
        else:
            self._h_rows, self._h_ns = 0, np.int64(round(config.horizon * 1e9))
        n = max(1, int(n_instruments))
        self._state = np.zeros((len(self.thresholds), n, _N_STATE), np.int64)
        self._last = np.zeros((n, _N_LAST), np.int64)
        self._out = np.empty((max(buffer_trades, len(self.thresholds)), _N_COLS), np.int64)
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
            j, k = _trade_rows(
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
        out = np.empty((self._state.shape[0] * self._state.shape[1], _N_COLS), np.int64)
        k = _close_all(self._state, self._last, out)
        if k:
            self._kept.append(out[:k])
        # one array from here on: trades() selects from it without joining the pieces again
        self._kept = [np.concatenate(self._kept)] if self._kept else []
        self._closed = True

    @property
    def instruments(self) -> np.ndarray:
        """(n,) sorted ids of the instruments that had rows."""
        return np.flatnonzero(self._last[:, _L_COUNT] > 0)

    def trades(
        self, k: int, tick_sizes: Mapping[int, float] | Sequence[float] | None = None
    ) -> Trades:
        """Trades of threshold ``self.thresholds[k]``, priced and ordered as ``simulate_rows``.

        Parameters
        ----------
        k : index into ``thresholds``.
        tick_sizes : quote currency per tick by instrument id (default 1.0: P&L in ticks).
        """
        if not self._closed:
            raise RuntimeError("trades() before finish(): positions still open")
        rec = self._kept[0] if self._kept else np.empty((0, _N_COLS), np.int64)
        rec = rec[rec[:, _C_THR] == k]
        if len(rec) == 0:
            return _empty()
        inst = rec[:, _C_INST].astype(np.uint32)
        if tick_sizes is None:
            tick = np.ones(len(rec))
        else:
            table = {int(i): float(tick_sizes[int(i)]) for i in np.unique(inst)}
            tick = np.array([table[int(i)] for i in inst], np.float64)
        cfg = replace(self.config, threshold=self.thresholds[k])
        t = _price(
            inst,
            rec[:, _C_SIDE].astype(np.int8),
            rec[:, _C_ENTRY_ROW].copy(),
            rec[:, _C_EXIT_ROW].copy(),
            rec[:, _C_ENTRY_TS].copy(),
            rec[:, _C_EXIT_TS].copy(),
            rec[:, _C_ENTRY_PX].copy(),
            rec[:, _C_EXIT_PX].copy(),
            rec[:, _C_REASON].astype(np.uint8),
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
            rec[:, _C_ENTRY_ROW] = remap(rec[:, _C_ENTRY_ROW])
            rec[:, _C_EXIT_ROW] = remap(rec[:, _C_EXIT_ROW])
        seen = self._last[:, _L_COUNT] > 0
        self._last[seen, _L_ROW] = remap(self._last[seen, _L_ROW])

    def _grow(self, n: int) -> None:
        state = np.zeros((self._state.shape[0], n, _N_STATE), np.int64)
        state[:, : self._state.shape[1]] = self._state
        last = np.zeros((n, _N_LAST), np.int64)
        last[: len(self._last)] = self._last
        self._state, self._last = state, last

    def _check_time(self, inst: np.ndarray, ts: np.ndarray) -> None:
        # each instrument's rows in time order, across chunks too (the array path refuses the
        # same input in simulate())
        prev = np.where(self._last[inst, _L_COUNT] > 0, self._last[inst, _L_TS], ts)
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
