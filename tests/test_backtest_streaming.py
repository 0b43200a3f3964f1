"""The streaming backtest equals the full-array path: labels, trades, metrics, sweep, plots data."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lobstream.kernels.dtypes import ROW_META_DTYPE
from lobstream.kernels.labels import StreamingLabels, mid_labels
from lobstream.models.metrics import classification_report, confusion_matrix, report_from_confusion
from lobstream.replay.backtest.evaluator import StreamingEvaluator, stream_backtest
from lobstream.replay.backtest.plots import (
    calibration_counts,
    calibration_table,
    signal_counts_by_bin,
)
from lobstream.replay.backtest.trading import (
    StreamingTrader,
    TradingConfig,
    signals_from_probs,
    trading_config_for,
)
from lobstream.testkit.backtest import backtest_files, evaluate, run_backtest
from lobstream.testkit.simulate import simulate_rows
from tests.test_backtest import MANIFEST, FakeRunner

BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "models" / "assets" / "binctabl_goog.pt"


def _cuts(data, n: int) -> list[int]:
    """Chunk boundaries anywhere in 0..n (empty chunks included)."""
    cuts = data.draw(st.lists(st.integers(0, n), max_size=6))
    return [0, *sorted(cuts), n]


def _stream(data, n: int, n_inst: int):
    inst = np.array(data.draw(st.lists(st.integers(0, n_inst - 1), min_size=n, max_size=n)))
    # time steps of 0 (rows at one timestamp) up to a few horizons
    ts = np.cumsum(data.draw(st.lists(st.integers(0, 7), min_size=n, max_size=n))).astype(np.int64)
    steps = data.draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n))
    bid = 1000 + np.cumsum(steps).astype(np.int64)
    spread = np.array(data.draw(st.lists(st.integers(1, 3), min_size=n, max_size=n)))
    meta = np.zeros(n, ROW_META_DTYPE)
    meta["instrument"], meta["ts_event"] = inst, ts
    meta["best_bid"], meta["best_ask"] = bid, bid + spread
    meta["mid"] = (meta["best_bid"] + meta["best_ask"]) / 2.0
    meta["seq"] = np.arange(1, n + 1)
    return meta


@given(
    data=st.data(),
    n=st.integers(1, 160),
    n_inst=st.integers(1, 4),
    unit=st.sampled_from(["events", "ns"]),
    horizon=st.integers(1, 12),
    alpha=st.sampled_from([0.0, 1e-4, 2e-3]),
    kind=st.sampled_from(["future", "smoothed", "spread"]),
)
def test_streaming_labels_equal_full_array_labels(data, n, n_inst, unit, horizon, alpha, kind):
    meta = _stream(data, n, n_inst)
    row_id = np.arange(n, dtype=np.float32)[:, None].repeat(3, axis=1)
    lab = StreamingLabels(horizon, unit, alpha, kind=kind)
    got = np.full(n, -9, np.int8)
    cuts = _cuts(data, n)
    outs = [
        lab.add(meta["instrument"][a:b], meta["mid"][a:b], meta["ts_event"][a:b], row_id[a:b])
        for a, b in zip(cuts, cuts[1:], strict=False)
        if b > a
    ]
    outs.append(lab.finish())
    for payload, labels in outs:
        got[payload[:, 0].astype(np.int64)] = labels
    expected = np.full(n, -9, np.int8)
    for i in range(n_inst):
        idx = np.flatnonzero(meta["instrument"] == i)
        if len(idx):
            expected[idx] = mid_labels(
                meta["mid"][idx], horizon, alpha, meta["ts_event"][idx], unit, kind
            )
    np.testing.assert_array_equal(got, expected)
    assert lab.n_pending == 0


def test_label_buffer_is_bounded_by_the_horizon():
    rng = np.random.default_rng(0)
    n, n_inst, k = 20_000, 3, 25
    inst = rng.integers(0, n_inst, n)
    mid = 1000 + np.cumsum(rng.integers(-1, 2, n)) / 2.0
    ts = np.arange(n, dtype=np.int64) * 10
    lab = StreamingLabels(k, "events", 0.0)
    for s in range(0, n, 997):
        lab.add(inst[s : s + 997], mid[s : s + 997], ts[s : s + 997], np.zeros((997, 3)))
        # rows wait only for their instrument's next k rows (plus the current chunk's)
        assert all(len(t.mid) <= 2 * k + 997 for t in lab._tails.values())
    assert lab.n_pending_max <= n_inst * k + 997
    lab_ns = StreamingLabels(100, "ns", 0.0)  # 100 ns = 10 rows of the whole stream
    for s in range(0, n, 500):
        lab_ns.add(inst[s : s + 500], mid[s : s + 500], ts[s : s + 500], np.zeros((500, 3)))
        assert all(len(t.mid) <= 25 + 500 for t in lab_ns._tails.values())


def test_labels_refuse_time_going_backwards():
    lab = StreamingLabels(2, "ns", 0.0)
    lab.add(np.zeros(2), np.array([10.0, 10.5]), np.array([5, 9]), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="instrument 0: ts_event goes backwards"):
        lab.add(np.zeros(1), np.array([10.0]), np.array([8]), np.zeros((1, 3)))


@given(
    data=st.data(),
    n=st.integers(1, 160),
    n_inst=st.integers(1, 3),
    latency=st.integers(0, 12),
    horizon=st.integers(1, 9),
    seconds=st.booleans(),
)
def test_streaming_trades_equal_simulate_rows(data, n, n_inst, latency, horizon, seconds):
    meta = _stream(data, n, n_inst)
    p = np.array(data.draw(st.lists(st.floats(0.01, 1.0), min_size=3 * n, max_size=3 * n)))
    probs = (p.reshape(n, 3) / p.reshape(n, 3).sum(axis=1, keepdims=True)).astype(np.float32)
    probs[np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))] = np.nan
    cfg = TradingConfig(
        latency_ns=latency,
        horizon=horizon * 1e-9 if seconds else horizon,
        horizon_unit="seconds" if seconds else "events",
        cost_per_share=0.01,
        cost_bps=0.5,
    )
    thresholds = (0.34, 0.5, 0.7)
    trader = StreamingTrader(cfg, thresholds, buffer_trades=4)  # small: the kernel resumes
    cuts = _cuts(data, n)
    for a, b in zip(cuts, cuts[1:], strict=False):
        trader.add(meta[a:b], probs[a:b])
    trader.finish()
    ticks = [0.01, 0.05, 0.25]
    for k, thr in enumerate(thresholds):
        full = simulate_rows(signals_from_probs(probs, thr), meta, cfg, ticks)
        got = trader.trades(k, ticks)
        for name, a, b in zip(full._fields, full, got, strict=True):
            assert a.dtype == b.dtype, name
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_trader_refuses_time_going_backwards():
    meta = np.zeros(3, ROW_META_DTYPE)
    meta["ts_event"] = [0, 5, 4]
    with pytest.raises(ValueError, match="backwards for instrument 0 at row 2"):
        StreamingTrader(TradingConfig(), (0.5,)).add(meta, np.full((3, 3), np.nan))


def test_report_from_confusion_is_the_classification_report():
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 3, 500), rng.integers(0, 3, 500)
    chunks = sum(confusion_matrix(y[s : s + 77], p[s : s + 77]) for s in range(0, 500, 77))
    assert report_from_confusion(chunks) == classification_report(y, p)
    with pytest.raises(ValueError, match="counts no labels"):
        report_from_confusion(np.zeros((3, 3), np.int64))
    with pytest.raises(ValueError, match="square"):
        report_from_confusion(np.zeros((3, 2), np.int64))


def test_plot_accumulators_add_up_over_chunks():
    rng = np.random.default_rng(2)
    n = 3000
    probs = rng.dirichlet([1, 1, 1], n)
    labels = rng.integers(0, 3, n)
    parts = [calibration_counts(probs[s : s + 400], labels[s : s + 400]) for s in range(0, n, 400)]
    count, sum_p, hits = (sum(x) for x in zip(*parts, strict=True))
    for c, row in enumerate(calibration_table(probs, labels)):
        np.testing.assert_array_equal(row["count"], count[c])
        np.testing.assert_allclose(row["mean_prob"], sum_p[c] / count[c], rtol=1e-12)
        # the old definition: frequency of class c among the bin's rows
        b = np.clip(np.digitize(probs[:, c], np.linspace(0, 1, 11)) - 1, 0, 9)
        freq = [np.mean(labels[b == j] == c) if np.any(b == j) else np.nan for j in range(10)]
        np.testing.assert_allclose(row["freq"], freq, rtol=1e-12)
        np.testing.assert_array_equal(hits[c], np.bincount(b[labels == c], minlength=10))
    day = 86_400 * 10**9
    ts = 20 * day + rng.integers(0, day, n)
    sig = rng.integers(-1, 2, n).astype(np.int8)
    whole = signal_counts_by_bin(ts, sig)
    assert (
        sum(
            signal_counts_by_bin(ts[s : s + 999], sig[s : s + 999]) for s in range(0, n, 999)
        ).tolist()
        == whole.tolist()
    )
    minutes = (ts % day) // (60 * 10**9)
    assert whole[1, 37] == np.sum((minutes // 15 == 37) & (sig > 0))
    assert whole[0].sum() == n


def _assert_same(a, b, path="") -> None:
    """Equal JSON values; floats to 1e-9 relative."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert isinstance(b, float) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (
            path,
            a,
            b,
        )
    else:
        assert a == b, (path, a, b)


def _both_paths(batches, runner, manifest, cfg, ticks, thresholds, n_inst, max_rows=None):
    """One scoring run feeding both the per-row record and a streaming evaluator."""
    ev = StreamingEvaluator(manifest, cfg, thresholds, n_instruments=n_inst)
    res = run_backtest(
        batches, runner, manifest, n_instruments=n_inst, max_rows=max_rows, on_rows=ev.add
    )
    ev.finish()
    full, full_trades = evaluate(res, manifest, cfg, tick_sizes=ticks, thresholds=thresholds)
    streamed, trades = ev.summary(res, tick_sizes=ticks)
    for name, a, b in zip(full_trades._fields, full_trades, trades, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    return full, streamed, res, ev


@pytest.mark.parametrize(
    "label, overrides",
    [
        ({"horizon": 4, "unit": "events", "alpha": 1e-5}, {"threshold": 0.5}),
        (
            # the synthetic rows are ~4 us apart per instrument: ~5 rows of horizon
            {"horizon": 2e-5, "unit": "seconds", "alpha": 2e-5},
            {"threshold": 0.45, "latency_ns": 7_000, "cost_bps": 0.3},
        ),
        ({"horizon": 4, "unit": "events", "alpha": 1e-5, "kind": "future"}, {"threshold": 0.5}),
        (
            {"horizon": 2e-5, "unit": "seconds", "alpha": 2e-4, "kind": "spread"},
            {"threshold": 0.45},
        ),
    ],
    ids=["events", "seconds-latency", "future-events", "spread-seconds"],
)
def test_synthetic_multi_instrument_summary_equals_full_path(label, overrides):
    from lobstream.replay.feed.synthetic import synthetic_events

    n_inst = 4
    manifest = {**MANIFEST, "label": {**label, "smoothing": "mean"}}
    events = synthetic_events(
        12_000, n_instruments=n_inst, seed=5, levels=4, snapshot_every=400, gap_prob=1e-3
    )
    chunks = [events[s : s + 1500] for s in range(0, len(events), 1500)]
    cfg = trading_config_for(manifest, cost_per_share=0.001, **overrides)
    ticks = [0.01, 0.05, 0.5, 1.0]
    full, streamed, res, ev = _both_paths(
        chunks, FakeRunner(8), manifest, cfg, ticks, (0.4, 0.5, 0.6), n_inst
    )
    assert full["n_scored"] > 1000 and full["trading"]["n_trades"] > 20
    assert len(full["trading"]["per_instrument"]) == n_inst
    _assert_same(full, streamed)
    # the plots' data: signal counts exactly, calibration up to the order of float sums
    has = ~np.isnan(res.probs[:, 0])
    np.testing.assert_array_equal(
        ev.signal_counts,
        signal_counts_by_bin(
            res.meta["ts_event"][has], signals_from_probs(res.probs[has], cfg.threshold)
        ),
    )
    for a, b in zip(
        calibration_table(res.probs[res.scored], res.labels[res.scored]),
        ev.calibration_table(),
        strict=True,
    ):
        np.testing.assert_array_equal(a["count"], b["count"])
        np.testing.assert_allclose(a["mean_prob"], b["mean_prob"], rtol=1e-9)
        np.testing.assert_allclose(a["freq"], b["freq"], rtol=1e-12)


@pytest.mark.parametrize("chunk", [37, 1500])
def test_streamed_baselines_equal_full_path(chunk):
    from lobstream.replay.feed.synthetic import synthetic_events

    n_inst = 3
    manifest = {
        **MANIFEST,
        "label": {"horizon": 4, "unit": "events", "alpha": 1e-5, "kind": "future"},
        "trained_on": {"class_balance": {"train": [0.4, 0.3, 0.3]}},
        "baselines": {"trend": {"rule": {"direction": "momentum", "lookback_rows": 5}}},
    }
    events = synthetic_events(6000, n_instruments=n_inst, seed=9, levels=4)
    chunks = [events[s : s + chunk] for s in range(0, len(events), chunk)]
    cfg = trading_config_for(manifest)
    full, streamed, _, _ = _both_paths(chunks, FakeRunner(8), manifest, cfg, None, (0.5,), n_inst)
    assert set(full["baselines"]) == {"majority", "trend"}
    assert full["baselines"]["trend"]["n"] == full["n_scored"] > 500
    _assert_same(full, streamed)


def test_stream_backtest_keeps_no_rows():
    from lobstream.replay.feed.synthetic import synthetic_events

    events = synthetic_events(4000, n_instruments=2, seed=3, levels=4)
    cfg = trading_config_for(MANIFEST, threshold=0.5)
    res, ev = stream_backtest(
        [events[s : s + 900] for s in range(0, len(events), 900)],
        FakeRunner(),
        MANIFEST,
        cfg,
        n_instruments=2,
    )
    assert res.n_rows > 1000 and not hasattr(res, "meta")  # counts only: no per-row record
    assert ev.labels.n_pending == 0 and ev.labels.n_pending_max <= 2 * 3 + 900
    with pytest.raises(ValueError, match="no per-row record"):
        evaluate(res, MANIFEST, cfg)
    summary, _ = ev.summary(res)
    assert summary["n_rows"] == res.n_rows and summary["n_scored"] == ev.confusion.sum()


@pytest.fixture(scope="module")
def goog_first_rows():
    """The bundled model over the first 20 k rows of the bundled GOOG day, both paths."""
    from lobstream.kernels.registry import Registry
    from lobstream.models.artifact import load_model
    from lobstream.models.runner import ModelRunner
    from lobstream.replay.readers import read_events
    from lobstream.replay.samples import GOOG_MESSAGE_10

    module, manifest = load_model(BUNDLED_MODEL)
    runner = ModelRunner(module, manifest, device="cpu", max_batch=256, threads=1)
    reg = Registry()
    batches = read_events([GOOG_MESSAGE_10], reg, batch_rows=8192)
    ev = StreamingEvaluator(
        manifest,
        trading_config_for(manifest, threshold=0.5, latency_ns=2_000_000, cost_per_share=0.001),
        (0.4, 0.5, 0.6, 0.7),
    )
    res = run_backtest(batches, runner, manifest, max_rows=20_000, on_rows=ev.add)
    ev.finish()
    return res, ev, manifest, reg


def test_goog_sample_summary_equals_full_path(goog_first_rows):
    res, ev, manifest, reg = goog_first_rows
    ticks = {inst.id: float(inst.tick_size) for inst in reg}
    full, full_trades = evaluate(
        res, manifest, ev.config, tick_sizes=ticks, thresholds=(0.4, 0.5, 0.6, 0.7)
    )
    streamed, trades = ev.summary(res, tick_sizes=ticks)
    assert res.n_rows == 20_000 and full["n_scored"] > 15_000
    assert full["trading"]["n_trades"] > 10
    _assert_same(full, streamed)
    # the JSON the CLI prints, as text
    assert json.dumps(full["metrics"]) == json.dumps(streamed["metrics"])
    for name, a, b in zip(full_trades._fields, full_trades, trades, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_goog_sample_other_trading_settings(goog_first_rows):
    """Same scored rows, other rules: a seconds horizon and no latency, fed in other chunks."""
    res, _, manifest, _ = goog_first_rows
    cfg = replace(
        trading_config_for(manifest, threshold=0.6),
        horizon=0.05,
        horizon_unit="seconds",
    )
    ev = StreamingEvaluator(manifest, cfg, (0.5, 0.8))
    for s in range(0, res.n_rows, 3333):
        ev.add(res.meta[s : s + 3333], res.probs[s : s + 3333])
    ev.finish()
    full, _ = evaluate(res, manifest, cfg, thresholds=(0.5, 0.8))
    _assert_same(full, ev.summary(res)[0])


def test_cli_json_equals_the_full_path(tmp_path):
    """`lobstream backtest --json` (streaming) against evaluate() of the per-row path."""
    from click.testing import CliRunner

    from lobstream.cli.backtest import backtest
    from lobstream.replay.samples import GOOG_MESSAGE_10

    args = ["--threshold", "0.5", "--latency-ms", "1", "--cost-per-share", "0.002"]
    res = CliRunner().invoke(
        backtest,
        [str(GOOG_MESSAGE_10), "--model", str(BUNDLED_MODEL), "--max-rows", "3000", "--json"]
        + args,
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    result, manifest, reg = backtest_files([GOOG_MESSAGE_10], BUNDLED_MODEL, max_rows=3000)
    cfg = trading_config_for(manifest, threshold=0.5, latency_ns=1_000_000, cost_per_share=0.002)
    ticks = {inst.id: float(inst.tick_size) for inst in reg}
    full, _ = evaluate(result, manifest, cfg, tick_sizes=ticks)
    full["trading"]["per_instrument"] = {"GOOG": full["trading"]["per_instrument"]["0"]}
    for key in ("n_rows", "n_windows", "n_scored", "metrics", "trading"):
        _assert_same(full[key], out[key], key)
