"""Numba kernels of the streaming trading simulation (:mod:`lobstream.replay.backtest.trading`).

One state machine per (threshold, instrument) over rows as they arrive; the rules are in that
module's docstring. State and trade records are int64 arrays whose columns are named below, so
the kernels hold no Python objects and keep no row.
"""

from __future__ import annotations

from lobstream.kernels._jit import njit

EXIT_SIGNAL = 0  # opposite signal (reversal)
EXIT_HORIZON = 1  # holding horizon reached
EXIT_END = 2  # data ended with the position open
EXIT_NAMES = ("signal", "horizon", "end")

FLAT, ENTRY_WAIT, HOLD, EXIT_WAIT = 0, 1, 2, 3
# columns of the int64 trade records
C_THR, C_INST, C_SIDE, C_REASON = 0, 1, 2, 3
C_ENTRY_ROW, C_EXIT_ROW, C_ENTRY_TS, C_EXIT_TS, C_ENTRY_PX, C_EXIT_PX = 4, 5, 6, 7, 8, 9
N_COLS = 10
# per (threshold, instrument) state columns
S_STATE, S_SIDE, S_TARGET, S_REASON, S_ENTRY_ROW, S_ENTRY_TS, S_ENTRY_PX, S_ENTRY_K = (
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
)
N_STATE = 8
# per instrument: rows seen, and the global row, ts, bid, ask of its last row
L_COUNT, L_ROW, L_TS, L_BID, L_ASK = 0, 1, 2, 3, 4
N_LAST = 5


@njit
def _enter(st, side, row, ts, bid, ask, k):
    st[S_SIDE] = side
    st[S_ENTRY_ROW] = row
    st[S_ENTRY_TS] = ts
    st[S_ENTRY_PX] = ask if side > 0 else bid
    st[S_ENTRY_K] = k
    st[S_STATE] = HOLD


@njit
def _record(out, k, thr, inst, st, row, ts, px, reason):
    out[k, C_THR] = thr
    out[k, C_INST] = inst
    out[k, C_SIDE] = st[S_SIDE]
    out[k, C_REASON] = reason
    out[k, C_ENTRY_ROW] = st[S_ENTRY_ROW]
    out[k, C_EXIT_ROW] = row
    out[k, C_ENTRY_TS] = st[S_ENTRY_TS]
    out[k, C_EXIT_TS] = ts
    out[k, C_ENTRY_PX] = st[S_ENTRY_PX]
    out[k, C_EXIT_PX] = px


@njit
def trade_rows(start, inst, ts, bid, ask, sig, first_row, lat, h_rows, h_ns, state, last, out):
    """Advance every (threshold, instrument) machine over rows ``start..`` of a chunk.

    ``sig`` (n_thr, m) int8; ``state`` (n_thr, n_inst, N_STATE) and ``last`` (n_inst, N_LAST)
    int64 are updated in place; trades go to ``out`` (cap, N_COLS). Returns (next row, trades
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
        c = last[i, L_COUNT]
        for t in range(n_thr):
            st = state[t, i]
            s = st[S_STATE]
            if s == FLAT:
                if sig[t, j] == 0:
                    continue
                st[S_SIDE] = sig[t, j]
                st[S_TARGET] = ts[j] + lat
                s = ENTRY_WAIT
            elif s == HOLD:
                if h_rows > 0:
                    due = c >= st[S_ENTRY_K] + h_rows
                else:
                    due = ts[j] >= st[S_ENTRY_TS] + h_ns
                if due:
                    st[S_REASON] = EXIT_HORIZON
                elif sig[t, j] == -st[S_SIDE]:
                    st[S_REASON] = EXIT_SIGNAL
                else:
                    continue
                st[S_TARGET] = ts[j] + lat
                s = EXIT_WAIT
            st[S_STATE] = s
            if ts[j] < st[S_TARGET]:
                continue  # the order is still in flight
            if s == ENTRY_WAIT:
                _enter(st, st[S_SIDE], row, ts[j], bid[j], ask[j], c)
            elif s == EXIT_WAIT:
                px = bid[j] if st[S_SIDE] > 0 else ask[j]
                _record(out, k, t, i, st, row, ts[j], px, st[S_REASON])
                k += 1
                if st[S_REASON] == EXIT_SIGNAL:
                    _enter(st, -st[S_SIDE], row, ts[j], bid[j], ask[j], c)
                else:
                    st[S_STATE] = FLAT
        last[i, L_COUNT] = c + 1
        last[i, L_ROW] = row
        last[i, L_TS] = ts[j]
        last[i, L_BID] = bid[j]
        last[i, L_ASK] = ask[j]
    return m, k


@njit
def close_all(state, last, out):
    """End of data: open positions and exits in flight close at their instrument's last row."""
    k = 0
    for t in range(state.shape[0]):
        for i in range(state.shape[1]):
            st = state[t, i]
            if last[i, L_COUNT] == 0:
                continue
            if st[S_STATE] == HOLD or st[S_STATE] == EXIT_WAIT:
                px = last[i, L_BID] if st[S_SIDE] > 0 else last[i, L_ASK]
                _record(out, k, t, i, st, last[i, L_ROW], last[i, L_TS], px, EXIT_END)
                k += 1
            st[S_STATE] = FLAT
    return k
