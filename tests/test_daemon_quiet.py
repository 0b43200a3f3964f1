"""The quiet-market path: ``model.keep_warm_ms`` throwaway calls while nothing arrives change
no signal (full-window and incremental runners), and are counted; the config refuses bad
values."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lobstream.engine.config import ConfigError, config_from_dict
from lobstream.models.artifact import load_model
from lobstream.replay.feed.synthetic import synthetic_events
from tests.test_daemon import PROB_ATOL, Running, backtest_probs, export_test_model, make_cfg
from tests.test_daemon_causal import TC, export_causal

SYMBOLS = ["AAA", "BBB"]


def test_keep_warm_ms_must_be_finite_and_not_negative(ipc_dir, tmp_path):
    path = tmp_path / "m.pt"
    export_test_model(path)
    base = {
        "model": {"path": str(path)},
        "instruments": {"instrument": [{"symbol": "AAA", "tick_size": 0.01}]},
        "ingest": {"endpoints": ["ipc:///tmp/x"]},
        "publish": {"endpoint": "ipc:///tmp/y"},
    }
    assert (
        config_from_dict(
            {**base, "model": {"path": str(path), "keep_warm_ms": 2}}
        ).model.keep_warm_ms
        == 2
    )
    for bad in (-1.0, float("inf")):
        with pytest.raises(ConfigError, match=r"model\.keep_warm_ms"):
            config_from_dict({**base, "model": {"path": str(path), "keep_warm_ms": bad}})


@pytest.mark.parametrize("kind", ["full-window", "incremental"])
def test_keep_warm_calls_change_no_signal(ipc_dir, tmp_path, kind):
    path = tmp_path / "m.pt"
    model_t = {"keep_warm_ms": 2.0, "overlap_batch": 0}
    if kind == "incremental":
        export_causal(path)
        model_t["window"] = TC
    else:
        export_test_model(path)
    cfg = make_cfg(ipc_dir, path, SYMBOLS, model=model_t, ingest={"max_drain": 1})
    events = synthetic_events(1500, n_instruments=2, seed=21, levels=4, snapshot_every=300)
    run = Running(cfg, SYMBOLS)
    try:
        assert run.daemon.model.inference == kind
        half = len(events) // 2
        run.wait_messages(run.send(events[:half]))
        # a quiet spell: the loop makes throwaway calls (bounded wait, judged on the count)
        for _ in range(200):
            if run.daemon.metrics.totals["keep_warm_calls"] >= 5:
                break
            time.sleep(0.01)
        warm_calls = run.daemon.metrics.totals["keep_warm_calls"]
        run.wait_messages(run.send(events[half:]))
        signals, _ = run.collect()
    finally:
        run.stop()
    assert warm_calls >= 5
    module, manifest = load_model(path)
    expected = backtest_probs(events, module, manifest, 2)
    assert len(signals) >= 20
    for s in signals:
        want = expected[(int(s["instrument"]), int(s["seq"]))]
        np.testing.assert_allclose(s["prob"], want, atol=PROB_ATOL, rtol=0)
    for i in range(2):
        mine = signals[signals["instrument"] == i]
        assert int(mine["seq"].max()) == max(k[1] for k in expected if k[0] == i)


def test_a_reload_request_during_a_load_is_served_after_it(ipc_dir, tmp_path, monkeypatch):
    """A second reload request (a newer file) while the first load is still warming up waits
    for that load and its swap instead of being ignored: the daemon ends on the newest file.
    The first load is held after it has read its file, so the order is fixed, not timed."""
    import threading

    import lobstream.engine.daemon as daemon_mod
    from lobstream.models.artifact import sha256_file

    real = daemon_mod.load_checked_model
    read_first, release = threading.Event(), threading.Event()
    calls = []

    def held(cfg, n=None):
        model = real(cfg, n)
        calls.append(model.sha256)
        if len(calls) == 1:
            read_first.set()
            release.wait(30)  # a slow warm-up, until the test lets it go
        return model

    monkeypatch.setattr(daemon_mod, "load_checked_model", held)
    live = tmp_path / "live.pt"
    export_test_model(live, seed=0)
    cfg = make_cfg(ipc_dir, live, SYMBOLS)  # reload_poll_s = 0: only requests reload
    run = Running(cfg, SYMBOLS)
    try:
        export_test_model(live, seed=1)
        run.daemon.request_reload()
        assert read_first.wait(30)
        export_test_model(live, seed=2)
        newest = sha256_file(live)
        run.daemon.request_reload()
        for _ in range(20):  # the loop has seen the request (it keeps it while a load runs)
            time.sleep(0.01)
        release.set()
        for _ in range(3000):
            if run.daemon.model.sha256 == newest:
                break
            time.sleep(0.01)
        final = run.daemon.model.sha256
        ok = run.daemon.metrics.totals["reloads.ok"]
    finally:
        release.set()
        run.stop()
    assert final == newest and ok == 2 and len(calls) == 2


def test_keep_warm_pauses_while_the_market_is_closed(ipc_dir, tmp_path):
    """No throwaway call before the first message or during an idle period
    (``ingest.idle_after_s``); they start again with the next message."""
    path = tmp_path / "m.pt"
    export_test_model(path)
    cfg = make_cfg(
        ipc_dir,
        path,
        SYMBOLS,
        model={"keep_warm_ms": 2.0, "overlap_batch": 0},
        ingest={"idle_after_s": 0.3},
    )
    events = synthetic_events(1200, n_instruments=2, seed=23, levels=4, snapshot_every=300)
    third = len(events) // 3
    totals = None
    run = Running(cfg, SYMBOLS)
    try:
        totals = run.daemon.metrics.totals
        for _ in range(30):  # the daemon waits for its feed: 0.3 s of loop rounds
            time.sleep(0.01)
        before_feed = totals["keep_warm_calls"]
        run.wait_messages(run.send(events[:third]))
        for _ in range(300):  # bounded: until the pause is counted
            if totals["ingest.idle_periods"] == 1:
                break
            time.sleep(0.01)
        warm_while_live = totals["keep_warm_calls"]
        for _ in range(30):  # 0.3 s more of the closed market
            time.sleep(0.01)
        warm_while_closed = totals["keep_warm_calls"] - warm_while_live
        run.wait_messages(run.send(events[third : 2 * third]))
        for _ in range(300):
            if totals["keep_warm_calls"] > warm_while_live + warm_while_closed:
                break
            time.sleep(0.01)
        after_resume = totals["keep_warm_calls"] - warm_while_live - warm_while_closed
        signals, _ = run.collect()
    finally:
        run.stop()
    assert before_feed == 0
    assert totals["ingest.idle_periods"] >= 1
    assert warm_while_live > 0  # the 0.3 s before the pause was counted kept it warm
    assert warm_while_closed == 0
    assert after_resume > 0
    assert len(signals) > 0
