"""The trading simulation against hand-worked cases and invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lobstream.kernels.dtypes import ROW_META_DTYPE
from lobstream.kernels.trading import EXIT_END, EXIT_HORIZON, EXIT_SIGNAL
from lobstream.replay.backtest.trading import (
    TradingConfig,
    max_drawdown,
    signals_from_probs,
    trade_stats,
)
from lobstream.testkit.simulate import simulate, simulate_rows, threshold_sweep


def _ladder(n, start=100):
    bid = np.arange(start, start + n, dtype=np.int64)
    return bid, bid + 1


def test_long_horizon_exit_crosses_the_spread():
    bid, ask = _ladder(6)
    ts = np.arange(6, dtype=np.int64)
    sig = np.array([1, 0, 0, 0, 0, 0], np.int8)
    t = simulate(sig, ts, bid, ask, TradingConfig(horizon=2), tick_size=0.01)
    assert list(t.side) == [1]
    assert (t.entry_row[0], t.exit_row[0]) == (0, 2)
    # buy at the ask of row 0 (101), sell at the bid of row 2 (102): one tick of 0.01
    assert (t.entry_px[0], t.exit_px[0]) == (101, 102)
    assert t.net[0] == pytest.approx(0.01)
    assert t.reason[0] == EXIT_HORIZON


def test_short_with_per_share_and_notional_costs():
    bid, ask = _ladder(6)
    ts = np.arange(6, dtype=np.int64)
    sig = np.array([0, -1, 0, 0, 0, 0], np.int8)
    cfg = TradingConfig(horizon=3, cost_per_share=0.01, cost_bps=10, quantity=10)
    t = simulate(sig, ts, bid, ask, cfg, tick_size=0.5)
    # sell 10 at bid[1] = 101, buy back at ask[4] = 105: -4 ticks * 0.5 * 10 = -20
    assert (t.entry_px[0], t.exit_px[0]) == (101, 105)
    assert t.gross[0] == pytest.approx(-20.0)
    # two fills: 2 * 10 * 0.01 = 0.2; 10 bps of (101 + 105) * 0.5 * 10 = 1.03
    assert t.costs[0] == pytest.approx(0.2 + 1.03)
    assert t.net[0] == pytest.approx(-21.23)
    assert t.notional[0] == pytest.approx(1030.0)


def test_latency_delays_both_fills_and_ignores_signals_in_flight():
    bid, ask = _ladder(7)
    ts = np.arange(0, 70, 10, dtype=np.int64)
    # the short at row 1 arrives while the long decided at row 0 is still in flight
    sig = np.array([1, -1, 0, 0, 0, 0, 0], np.int8)
    t = simulate(sig, ts, bid, ask, TradingConfig(horizon=2, latency_ns=15))
    assert len(t.side) == 1
    # decided at ts 0, fills at the first row with ts >= 15: row 2 (ask 103)
    assert t.entry_row[0] == 2 and t.entry_px[0] == 103
    # horizon due at row 4 (ts 40), that exit fills at ts >= 55: row 6 (bid 106)
    assert t.exit_row[0] == 6 and t.exit_px[0] == 106
    assert t.reason[0] == EXIT_HORIZON


def test_opposite_signal_reverses_and_end_of_data_closes():
    bid, ask = _ladder(8)
    ts = np.arange(8, dtype=np.int64)
    sig = np.array([1, 0, -1, 0, 0, 0, 0, 0], np.int8)
    t = simulate(sig, ts, bid, ask, TradingConfig(horizon=10))
    assert list(t.side) == [1, -1]
    assert list(t.entry_row) == [0, 2] and list(t.exit_row) == [2, 7]
    assert list(t.reason) == [EXIT_SIGNAL, EXIT_END]
    # long: 101 -> bid 102 (+1); short: bid 102 -> ask 108 (-6)
    assert list(t.gross) == [1.0, -6.0]


def test_same_side_signals_do_not_extend_the_horizon():
    bid, ask = _ladder(6)
    ts = np.arange(6, dtype=np.int64)
    sig = np.array([1, 1, 1, 0, 0, 0], np.int8)
    t = simulate(sig, ts, bid, ask, TradingConfig(horizon=2))
    assert list(t.entry_row) == [0] and list(t.exit_row) == [2]


def test_next_entry_after_a_horizon_exit():
    bid, ask = _ladder(8)
    ts = np.arange(8, dtype=np.int64)
    sig = np.array([-1, 0, 0, 1, 0, 0, 0, 0], np.int8)
    t = simulate(sig, ts, bid, ask, TradingConfig(horizon=2))
    assert list(t.side) == [-1, 1]
    assert list(t.entry_row) == [0, 3] and list(t.exit_row) == [2, 5]


def test_order_arriving_after_the_data_never_fills():
    bid, ask = _ladder(4)
    ts = np.arange(4, dtype=np.int64)
    sig = np.array([0, 0, 1, 0], np.int8)
    t = simulate(sig, ts, bid, ask, TradingConfig(latency_ns=100))
    assert len(t.side) == 0
    assert trade_stats(t)["n_trades"] == 0


def test_horizon_in_seconds():
    bid, ask = _ladder(5)
    ts = np.array([0, 500_000_000, 1_000_000_000, 1_500_000_000, 2_000_000_000], np.int64)
    sig = np.array([1, 0, 0, 0, 0], np.int8)
    t = simulate(sig, ts, bid, ask, TradingConfig(horizon=1.0, horizon_unit="seconds"))
    assert list(t.exit_row) == [2]


def test_time_going_backwards_is_refused():
    bid, ask = _ladder(3)
    with pytest.raises(ValueError, match="backwards at row 2"):
        simulate(np.zeros(3, np.int8), np.array([0, 5, 4]), bid, ask, TradingConfig())


def test_signals_from_probs():
    p = np.array(
        [[0.6, 0.2, 0.2], [0.2, 0.2, 0.6], [0.45, 0.1, 0.45], [0.3, 0.4, 0.3], [np.nan] * 3]
    )
    assert list(signals_from_probs(p, 0.5)) == [-1, 1, 0, 0, 0]
    assert list(signals_from_probs(p, 0.4)) == [-1, 1, 1, 0, 0]


def test_max_drawdown():
    assert max_drawdown(np.array([1.0, 3.0, 0.0, 2.0, -1.0])) == 4.0
    assert max_drawdown(np.array([-1.0, -2.0])) == 2.0
    assert max_drawdown(np.array([])) == 0.0


def test_stats_hand_computed():
    bid, ask = _ladder(8)
    ts = np.arange(8, dtype=np.int64)
    sig = np.array([1, 0, -1, 0, 0, 0, 0, 0], np.int8)
    s = trade_stats(simulate(sig, ts, bid, ask, TradingConfig(horizon=10)))
    assert s["n_trades"] == 2 and s["n_long"] == 1 and s["n_short"] == 1
    assert s["net_pnl"] == -5.0 and s["hit_rate"] == 0.5
    assert s["turnover"] == (101 + 102) + (102 + 108)
    # per-trade net P&L +1, -6: mean -2.5, std (ddof=1) 4.9497
    assert s["sharpe"] == pytest.approx(-2.5 / np.std([1.0, -6.0], ddof=1))
    assert s["max_drawdown"] == 6.0
    assert s["exits"] == {"signal": 1, "horizon": 0, "end": 1}


def _meta(inst, ts, bid, ask):
    m = np.zeros(len(inst), ROW_META_DTYPE)
    m["instrument"], m["ts_event"], m["best_bid"], m["best_ask"] = inst, ts, bid, ask
    m["mid"] = (m["best_bid"] + m["best_ask"]) / 2
    return m


def test_simulate_rows_splits_instruments_and_maps_rows_back():
    # two instruments interleaved: A rows 0,2,4,6; B rows 1,3,5,7
    inst = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    ts = np.arange(8) * 10
    bid = np.array([100, 500, 101, 499, 102, 498, 103, 497])
    meta = _meta(inst, ts, bid, bid + 1)
    sig = np.array([1, -1, 0, 0, 0, 0, 0, 0], np.int8)
    t = simulate_rows(sig, meta, TradingConfig(horizon=2), tick_sizes=[0.01, 0.05])
    assert list(t.instrument) == [0, 1]
    assert list(t.entry_row) == [0, 1] and list(t.exit_row) == [4, 5]
    # A: buy 101, sell bid 102 -> +0.01; B: sell 500, buy back ask 499 -> +0.05
    assert t.net == pytest.approx([0.01, 0.05])


def test_threshold_sweep_monotone_trade_count():
    rng = np.random.default_rng(0)
    n = 400
    p = rng.dirichlet([1, 1, 1], size=n)
    bid = 1000 + np.cumsum(rng.integers(-1, 2, n))
    meta = _meta(np.zeros(n), np.arange(n), bid, bid + 1)
    sweep = threshold_sweep(p, meta, TradingConfig(horizon=5), thresholds=(0.5, 0.7, 0.9))
    assert [s["threshold"] for s in sweep] == [0.5, 0.7, 0.9]
    assert sweep[0]["n_trades"] >= sweep[2]["n_trades"] > 0


@given(
    sig=st.lists(st.sampled_from([-1, 0, 0, 1]), min_size=1, max_size=60),
    gaps=st.data(),
    latency=st.integers(0, 30),
    horizon=st.integers(1, 10),
)
def test_invariants(sig, gaps, latency, horizon):
    n = len(sig)
    ts = np.cumsum(gaps.draw(st.lists(st.integers(0, 10), min_size=n, max_size=n)))
    bid = 1000 + np.cumsum(gaps.draw(st.lists(st.integers(-2, 2), min_size=n, max_size=n)))
    ask = bid + 1 + np.array(gaps.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    t = simulate(
        np.array(sig, np.int8), ts, bid, ask, TradingConfig(latency_ns=latency, horizon=horizon)
    )
    assert np.all(t.exit_row >= t.entry_row)
    assert np.all(t.entry_ts == ts[t.entry_row]) and np.all(t.exit_ts == ts[t.exit_row])
    # positions never overlap; a reversal starts exactly where the previous trade ended
    assert np.all(t.entry_row[1:] >= t.exit_row[:-1])
    rev = t.reason[:-1] == EXIT_SIGNAL
    assert np.all(t.entry_row[1:][rev] == t.exit_row[:-1][rev])
    assert np.all(t.side[1:][rev] == -t.side[:-1][rev])
    # only the last trade may end with the data
    assert np.all(t.reason[:-1] != EXIT_END)
    # a horizon exit is decided no earlier than the horizon: fill row >= entry + horizon
    hz = t.reason == EXIT_HORIZON
    assert np.all(t.exit_row[hz] >= t.entry_row[hz] + horizon)
    # prices: long buys the ask and sells the bid, short the reverse
    long_ = t.side > 0
    assert np.all(t.entry_px[long_] == ask[t.entry_row[long_]])
    assert np.all(t.exit_px[long_] == bid[t.exit_row[long_]])
    assert np.all(t.entry_px[~long_] == bid[t.entry_row[~long_]])
    assert np.all(t.exit_px[~long_] == ask[t.exit_row[~long_]])
    # with no costs, the gross P&L is the signed price change
    assert np.allclose(t.net, t.side * (t.exit_px - t.entry_px))


def test_streaming_trader_order_in_flight_across_chunks():
    """The hand-worked latency case, with chunk boundaries between decisions and fills."""
    from lobstream.replay.backtest.trading import StreamingTrader

    bid, ask = _ladder(7)
    ts = np.arange(0, 70, 10, dtype=np.int64)
    meta = _meta(np.zeros(7), ts, bid, ask)
    probs = np.full((7, 3), np.nan)
    probs[0] = [0.1, 0.1, 0.8]  # long at row 0
    probs[1] = [0.8, 0.1, 0.1]  # short while the long is in flight: ignored
    trader = StreamingTrader(TradingConfig(horizon=2, latency_ns=15), (0.5,))
    for a, b in ((0, 1), (1, 2), (2, 5), (5, 7)):
        trader.add(meta[a:b], probs[a:b])
    trader.finish()
    t = trader.trades(0)
    assert list(t.entry_row) == [2] and list(t.exit_row) == [6]
    assert (t.entry_px[0], t.exit_px[0], t.reason[0]) == (103, 106, EXIT_HORIZON)
    # an exit still in flight when the data ends closes at the last row
    trader = StreamingTrader(TradingConfig(horizon=2, latency_ns=25), (0.5,))
    trader.add(meta, probs)
    trader.finish()
    t = trader.trades(0)
    assert list(t.entry_row) == [3] and list(t.exit_row) == [6] and list(t.reason) == [EXIT_END]
