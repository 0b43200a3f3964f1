"""The in-process backtest: windows across chunks and instruments, labels, metrics, trading."""

from __future__ import annotations

import numpy as np
import pytest

from lobstream.kernels.book import new_book, new_report
from lobstream.kernels.dtypes import (
    ACTION_UPDATE,
    EVENT_DTYPE,
    FEATURE_ZSCORE,
    FLAG_LAST,
    ROW_META_DTYPE,
    SIDE_ASK,
    SIDE_BID,
)
from lobstream.kernels.features import FeatureSpec, events_to_rows
from lobstream.kernels.labels import smoothed_labels
from lobstream.models.manifest import label_def_from_manifest, spec_from_manifest
from lobstream.models.scoring import WindowScorer
from lobstream.replay.backtest.trading import trading_config_for
from lobstream.testkit.backtest import evaluate, run_backtest

T, L = 5, 2
F = 4 * L
MANIFEST = {
    "T": T,
    "L": L,
    "F": F,
    "arch": "fake",
    "feature": {"kind": "zscore", "levels": L, "params": [1000.0, 10.0, 5.0, 3.0]},
    "label": {"horizon": 3, "unit": "events", "alpha": 1e-5, "smoothing": "mean"},
}


class FakeRunner:
    """The runner's interface (input buffer + infer) with a deterministic function of the
    window in place of a model, recording every window it is given."""

    def __init__(self, max_batch: int = 4) -> None:
        self.input = np.zeros((max_batch, 1, T, F), np.float32)
        self.seen: list[np.ndarray] = []

    def infer(self, n: int) -> np.ndarray:
        w = self.input[:n, 0]
        self.seen.extend(w.copy())
        return _fake_probs(w)


def _fake_probs(windows: np.ndarray) -> np.ndarray:
    # up when the last row's mid-ish price column rose over the window, down when it fell
    z = (
        np.stack(
            [
                -(windows[:, -1, 0] - windows[:, 0, 0]),
                np.zeros(len(windows)),
                windows[:, -1, 0] - windows[:, 0, 0],
            ],
            axis=1,
        )
        * 5
    )
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _events(n_steps: int, n_instruments: int, seed: int) -> np.ndarray:
    """A random-walk two-level book per instrument: every step re-quotes one instrument's
    touch (old levels removed, new ones added) and ends with LAST."""
    rng = np.random.default_rng(seed)
    mids = np.full(n_instruments, 1000)
    out = []
    ts = 0
    for _ in range(n_steps):
        i = int(rng.integers(n_instruments))
        old = mids[i]
        mids[i] += int(rng.integers(-2, 3))
        ts += int(rng.integers(1, 1000))
        m = mids[i]
        recs = []
        for px in (old - 1, old - 2):
            recs.append((px, 0.0, SIDE_BID))
        for px in (old + 1, old + 2):
            recs.append((px, 0.0, SIDE_ASK))
        for px in (m - 1, m - 2):
            recs.append((px, float(rng.integers(1, 10)), SIDE_BID))
        for px in (m + 1, m + 2):
            recs.append((px, float(rng.integers(1, 10)), SIDE_ASK))
        ev = np.zeros(len(recs), EVENT_DTYPE)
        ev["price"] = [r[0] for r in recs]
        ev["size"] = [r[1] for r in recs]
        ev["side"] = [r[2] for r in recs]
        ev["action"] = ACTION_UPDATE
        ev["instrument"] = i
        ev["ts_event"] = ts
        ev["flags"][-1] = FLAG_LAST
        out.append(ev)
    return np.concatenate(out)


def _all_rows(events, n_instruments):
    spec = spec_from_manifest(MANIFEST)
    rows = np.empty((len(events), F), np.float32)
    meta = np.empty(len(events), ROW_META_DTYPE)
    m = events_to_rows(new_book(n_instruments), spec, events, rows, meta, new_report())
    return rows[:m], meta[:m]


def _chunks(events, size):
    return [events[s : s + size] for s in range(0, len(events), size)]


def test_manifest_readers():
    spec = spec_from_manifest(MANIFEST)
    assert isinstance(spec, FeatureSpec) and spec.kind == FEATURE_ZSCORE and spec.levels == L
    lab = label_def_from_manifest(MANIFEST)
    assert (lab.horizon, lab.unit) == (3, "events")
    assert lab.kind == "smoothed"  # an old manifest without a kind: its labels were smoothed
    fut = label_def_from_manifest({"label": {**MANIFEST["label"], "kind": "future"}})
    assert fut.kind == "future" and fut.alpha == 1e-5
    with pytest.raises(ValueError, match="label kind 'mean'"):
        label_def_from_manifest({"label": {**MANIFEST["label"], "kind": "mean"}})
    secs = label_def_from_manifest({"label": {"horizon": 1.5, "unit": "seconds", "alpha": 0}})
    assert (secs.horizon, secs.unit, secs.kind) == (1.5, "seconds", "smoothed")
    assert secs.kernel_args() == (1_500_000_000, "ns")
    cfg = trading_config_for(MANIFEST, threshold=0.7, cost_bps=None)
    assert (cfg.horizon, cfg.horizon_unit, cfg.threshold, cfg.cost_bps) == (3, "events", 0.7, 0)
    with pytest.raises(ValueError, match="label definition"):
        label_def_from_manifest({"label": {"unit": "events"}})
    with pytest.raises(ValueError, match="feature"):
        spec_from_manifest({"L": 2})


@pytest.mark.parametrize("chunk", [7, 40, 10_000])
def test_windows_equal_naive_per_instrument_windows(chunk):
    n_inst = 3
    events = _events(120, n_inst, seed=1)
    rows, meta = _all_rows(events, n_inst)
    runner = FakeRunner(max_batch=4)
    res = run_backtest(_chunks(events, chunk), runner, MANIFEST, n_instruments=n_inst)
    assert res.n_events == len(events)
    np.testing.assert_array_equal(res.meta, meta)
    # naive: every instrument's rows on their own, window j = rows[j - T + 1 : j + 1]
    expected_windows, expected_probs = [], np.full((len(meta), 3), np.nan, np.float32)
    for i in range(n_inst):
        idx = np.flatnonzero(meta["instrument"] == i)
        for j in range(T - 1, len(idx)):
            w = rows[idx[j - T + 1 : j + 1]]
            expected_windows.append((idx[j], w))
            expected_probs[idx[j]] = _fake_probs(w[None])[0]
    assert res.n_windows == len(expected_windows)
    seen = {tuple(w.ravel()) for w in runner.seen}
    assert all(tuple(w.ravel()) in seen for _, w in expected_windows)
    np.testing.assert_allclose(res.probs, expected_probs, rtol=0, atol=1e-6)
    # labels: each instrument's own stream with the artifact's definition
    for i in range(n_inst):
        idx = np.flatnonzero(meta["instrument"] == i)
        lab = smoothed_labels(
            meta["mid"][idx].astype(np.float64), 3, 1e-5, meta["ts_event"][idx], "events"
        )
        np.testing.assert_array_equal(res.labels[idx], lab)


def test_max_rows_and_progress():
    events = _events(60, 1, seed=2)
    calls = []
    res = run_backtest(
        _chunks(events, 50),
        FakeRunner(),
        MANIFEST,
        max_rows=25,
        on_progress=lambda e, r, w: calls.append((e, r, w)),
    )
    assert len(res.meta) == 25 and res.n_windows == 25 - T + 1
    assert calls and calls[-1][1] == 25
    assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:], strict=False))


def test_scorer_refuses_a_mismatched_buffer():
    with pytest.raises(ValueError, match=r"expected \(B, 1, 6, 8\)"):
        WindowScorer(FakeRunner(), 6, F)


def test_evaluate_report_and_trading():
    events = _events(300, 2, seed=3)
    res = run_backtest(_chunks(events, 64), FakeRunner(), MANIFEST, n_instruments=2)
    cfg = trading_config_for(MANIFEST, threshold=0.5, cost_per_share=0.01)
    summary, trades = evaluate(res, MANIFEST, cfg, tick_sizes=[0.01, 0.05], thresholds=(0.4, 0.6))
    m = summary["metrics"]
    for k in ("accuracy", "f1_macro", "f1_weighted", "mcc", "kappa", "confusion"):
        assert k in m
    assert m["n"] == summary["n_scored"] == int(res.scored.sum()) > 0
    assert np.sum(m["confusion"]) == summary["n_scored"]
    t = summary["trading"]
    assert t["n_trades"] == len(trades.net) > 0
    assert t["costs"] == pytest.approx(2 * 0.01 * t["n_trades"])
    assert [s["threshold"] for s in t["sweep"]] == [0.4, 0.6]
    assert t["config"]["horizon"] == 3
    per = t["per_instrument"]
    assert set(per) == {"0", "1"}
    assert sum(v["n_trades"] for v in per.values()) == t["n_trades"]
    assert sum(v["net_pnl"] for v in per.values()) == pytest.approx(t["net_pnl"])


def test_backtest_baselines_on_the_scored_rows():
    """Majority and trend baselines are scored on exactly the model's rows; the trend rule is
    the manifest's (a slow loop over the window's mids is the reference)."""
    from lobstream.testkit.labels import trend_signal

    events = _events(400, 2, seed=4)
    manifest = {
        **MANIFEST,
        "label": {**MANIFEST["label"], "kind": "future"},
        "trained_on": {"class_balance": {"train": [0.3, 0.3, 0.4]}},
        "baselines": {"trend": {"rule": {"direction": "reversal", "lookback_rows": 4}}},
    }
    res = run_backtest(_chunks(events, 50), FakeRunner(), manifest, n_instruments=2)
    summary, _ = evaluate(res, manifest, trading_config_for(manifest), thresholds=(0.5,))
    assert summary["model"]["label_kind"] == "future"
    b = summary["baselines"]
    assert b["majority"]["class"] == 2 and b["majority"]["n"] == summary["n_scored"]
    assert (
        b["trend"]["rule"]["direction"] == "reversal" and b["trend"]["rule"]["lookback_rows"] == 4
    )
    want = np.zeros((3, 3), np.int64)
    alpha = manifest["label"]["alpha"]
    for i in (0, 1):
        idx = np.flatnonzero(res.meta["instrument"] == i)
        for j, r in enumerate(idx):
            if not res.scored[r]:
                continue
            sig = -trend_signal(res.meta["mid"][idx[: j + 1]], 4)
            pred = 2 if sig > alpha else 0 if sig < -alpha else 1
            want[res.labels[r], pred] += 1
    np.testing.assert_array_equal(b["trend"]["confusion"], want)
    # an old manifest: no kind (smoothed), no fitted rule (momentum over the label horizon)
    old, _ = evaluate(res, MANIFEST, trading_config_for(MANIFEST), thresholds=(0.5,))
    assert old["model"]["label_kind"] == "smoothed" and "majority" not in old["baselines"]
    assert old["baselines"]["trend"]["rule"]["direction"] == "momentum"
    assert "none in manifest" in old["baselines"]["trend"]["rule"]["source"]


class _Recording:
    """Wraps a runner: keeps a copy of every window handed to the model, in call order."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.input = inner.input
        self.windows: list[np.ndarray] = []

    def infer(self, n: int) -> np.ndarray:
        self.windows.extend(self.input[:n, 0].copy())
        return self.inner.infer(n)


def test_daemon_windows_and_probabilities_equal_the_backtest(tmp_path):
    """The same events through the live daemon (real ipc:// sockets, its own runner) and
    through run_backtest: every window the daemon's model saw is the backtest's window of the
    same (instrument, seq), and every signal's probabilities equal the backtest's."""
    import dataclasses
    import shutil
    import tempfile
    import time

    from lobstream.engine.daemon import load_checked_model
    from lobstream.models.artifact import load_model
    from lobstream.replay.backtest.run import rows_from_events
    from lobstream.replay.feed.synthetic import synthetic_events
    from tests.test_daemon import Running, TorchRunner, export_test_model, make_cfg
    from tests.test_daemon import T as DT

    path = tmp_path / "cnn.pt"
    export_test_model(path)
    symbols = ["AAA", "BBB"]
    events = synthetic_events(3000, n_instruments=2, seed=11, levels=4, snapshot_every=200)
    events["ts_recv"] = time.monotonic_ns()
    ipc = tempfile.mkdtemp(prefix="lobb", dir="/tmp")
    try:
        cfg = make_cfg(ipc, path, symbols, ingest={"max_drain": 1})
        loaded = load_checked_model(cfg)
        rec = _Recording(loaded.runner)
        run = Running(cfg, symbols, dataclasses.replace(loaded, runner=rec))
        try:
            run.wait_messages(run.send(events))
            signals, _ = run.collect()
        finally:
            run.stop()
    finally:
        shutil.rmtree(ipc, ignore_errors=True)

    module, manifest = load_model(path)
    res = run_backtest(
        [events[s : s + 700] for s in range(0, len(events), 700)],
        TorchRunner(module),
        manifest,
        n_instruments=2,
    )
    rows = np.concatenate(
        [r.copy() for r, _, _ in rows_from_events([events], spec_from_manifest(manifest), 2)]
    )
    assert len(rows) == len(res.meta)
    index = {
        (int(i), int(s)): k
        for k, (i, s) in enumerate(zip(res.meta["instrument"], res.meta["seq"], strict=True))
    }

    assert len(signals) == len(rec.windows) > 10  # the count depends on scheduling
    for sig, window in zip(signals, rec.windows, strict=True):
        k = index[(int(sig["instrument"]), int(sig["seq"]))]
        own = np.flatnonzero(res.meta["instrument"][: k + 1] == sig["instrument"])
        assert len(own) >= DT
        np.testing.assert_array_equal(window, rows[own[-DT:]])
        np.testing.assert_allclose(sig["prob"], res.probs[k], atol=1e-5)


def test_backtest_cli_json_and_plots(tmp_path):
    """`lobstream backtest` on a slice of the bundled GOOG sample with a tiny untrained model."""
    import json

    import torch
    from click.testing import CliRunner

    from lobstream.cli.backtest import backtest
    from lobstream.models.artifact import export_model
    from lobstream.models.zoo import build_model
    from lobstream.replay.samples import GOOG_MESSAGE_10

    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    export_model(
        build_model("cnn", T=10, levels=10, channels=(4,), hidden=8).eval(),
        path,
        {
            "feature": {"kind": "zscore", "params": [58_000.0, 200.0, 100.0, 100.0]},
            "label": {"horizon": 5, "unit": "events", "alpha": 1e-5, "smoothing": "mean"},
            "trained_on": {"note": "untrained test model"},
            "metrics": {},
        },
    )
    res = CliRunner().invoke(
        backtest,
        [
            str(GOOG_MESSAGE_10),
            "--model",
            str(path),
            "--max-rows",
            "600",
            "--threshold",
            "0.34",
            "--latency-ms",
            "1",
            "--cost-per-share",
            "0.001",
            "--cost-bps",
            "0.5",
            "--json",
            "--plots",
            str(tmp_path / "plots"),
            "--batch",
            "32",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["n_rows"] == 600 and out["n_windows"] == 600 - 10 + 1
    for k in ("accuracy", "f1_macro", "f1_weighted", "mcc", "kappa", "confusion"):
        assert k in out["metrics"]
    assert out["model"]["label_kind"] == "smoothed"  # the manifest names no kind
    assert out["baselines"]["trend"]["n"] == out["n_scored"]
    t = out["trading"]
    assert t["config"]["latency_ns"] == 1_000_000 and t["config"]["horizon"] == 5
    assert t["n_trades"] > 0 and len(t["sweep"]) == 6
    assert out["instruments"] == {"GOOG": 0}
    assert out["trading"]["per_instrument"]["GOOG"]["n_trades"] == t["n_trades"]
    for name in ("equity", "confusion", "calibration", "signals"):
        assert (tmp_path / "plots" / f"{name}.png").stat().st_size > 1000
