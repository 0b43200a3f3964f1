"""The publisher API (lobstream.live.Publisher) without the live extra: the events it encodes,
and ``examples/publish_feed.py`` feeding the daemon over ipc://, whose signals equal the
in-process backtest of what was published."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from decimal import Decimal

import numpy as np
import pytest
import zmq

from lobstream.engine.daemon import Daemon, load_checked_model
from lobstream.engine.signals import decode as decode_signal
from lobstream.kernels import book as B
from lobstream.kernels import wire
from lobstream.kernels.dtypes import (
    ACTION_CLEAR,
    ACTION_TRADE,
    ACTION_UPDATE,
    CODE_SEQ_GAP,
    CODE_STALE_SKIPPED,
    FLAG_LAST,
    FLAG_SNAPSHOT,
    SIDE_ASK,
    SIDE_BID,
)
from lobstream.kernels.registry import Registry
from lobstream.live import Publisher, encode_levels
from lobstream.models.artifact import load_model
from tests.conftest import REPO
from tests.test_daemon import PROB_ATOL, artifact, backtest_probs, make_cfg  # noqa: F401


def _sub(ctx, endpoint: str, topic: bytes = b""):
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 0)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SUBSCRIBE, topic)
    s.connect(endpoint)
    return s


def test_encode_levels_and_sequence(ipc_dir):
    inst = Registry().add("AAA", "0.01")
    ev = encode_levels(inst, 5, [("100.01", 2)], [("100.02", 3), (Decimal("100.05"), 0)],
                       ts_event=7, snapshot=True)  # fmt: skip
    assert ev["action"].tolist() == [ACTION_CLEAR] + [ACTION_UPDATE] * 3
    assert ev["seq"].tolist() == [5, 6, 7, 8]
    assert ev["price"].tolist() == [0, 10001, 10002, 10005]
    assert ev["side"].tolist()[1:] == [SIDE_BID, SIDE_ASK, SIDE_ASK]
    assert (ev["flags"] & FLAG_SNAPSHOT).all() and ev["flags"][-1] & FLAG_LAST
    assert not (ev["flags"][:-1] & FLAG_LAST).any() and (ev["ts_event"] == 7).all()
    for bad in ([("100.015", 1)], [("0", 1)], [("100.01", -1)], [("100.01", float("nan"))]):
        with pytest.raises(ValueError):
            encode_levels(inst, 1, bad, [], ts_event=1)
    assert len(encode_levels(inst, 1, [], [], ts_event=1)) == 0

    ctx = zmq.Context()
    endpoint = f"ipc://{ipc_dir}/md"
    with Publisher(endpoint, ctx=ctx) as pub:
        sub = _sub(ctx, endpoint, b"md.")
        assert pub.wait_for_subscribers(1, 5)
        pub.instrument("AAA", "0.01")
        with pytest.raises(ValueError, match="tick_size"):
            pub.instrument("AAA", "0.1")
        pub.snapshot("AAA", [("10.00", 1)], [("10.01", 1)], ts_event=1)
        pub.update("AAA", asks=[("10.01", 0), ("10.02", 4)], ts_event=2)
        pub.trade("AAA", "10.01", 1, SIDE_BID, ts_event=2)
        pub.gap("AAA")
        pub.update("AAA", bids=[("10.00", 2)], ts_event=3)
        got = []
        while sub.poll(1000) and len(got) < 4:
            d = wire.decode(sub.recv_multipart())
            assert d.symbol == "AAA" and d.reason == wire.REASON_OK
            got.append(d.events.copy())
        sub.close()
    ctx.term()
    ev = np.concatenate(got)
    book = ev["action"] != ACTION_TRADE
    assert ev["seq"][book].tolist() == [1, 2, 3, 4, 5, 7]  # the gap skipped 6
    assert ev["seq"][~book].tolist() == [0] and ev["side"][~book].tolist() == [SIDE_BID]
    assert (ev["ts_recv"] > 0).all()
    bk = B.new_book(1)
    rep = B.new_report()
    B.apply_events(bk, ev, rep)
    assert rep[0, CODE_SEQ_GAP] == 1 and rep[0, CODE_STALE_SKIPPED] == 1 and bk.stale[0]


def test_example_feeds_the_daemon(artifact, ipc_dir):  # noqa: F811
    """examples/publish_feed.py (snapshot, updates, trades, a lost packet and its snapshot) into
    the daemon: its signals are the backtest's of the events the example published."""
    symbols = ["AAA"]
    cfg = make_cfg(ipc_dir, artifact, symbols, ingest={"max_drain": 1})
    daemon = Daemon(cfg, symbols, load_checked_model(cfg))
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    ctx = zmq.Context()
    md = _sub(ctx, cfg.ingest.endpoints[0], b"md.")
    sig = _sub(ctx, cfg.publish.endpoint, b"sig.")
    cmd = [sys.executable, str(REPO / "examples" / "publish_feed.py"), "--to",
           cfg.ingest.endpoints[0], "--symbol", "AAA", "--price", "200.00", "--packets", "1200",
           "--rate", "0", "--gap-every", "500", "--subscribers", "2", "--wait", "60"]  # fmt: skip
    proc = None
    try:
        assert daemon.started.wait(180), "daemon did not open its sockets"
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        events, signals = [], []
        end = time.monotonic() + 60
        last = time.monotonic()
        while time.monotonic() < end and (proc.poll() is None or time.monotonic() - last < 0.5):
            for s, out in ((md, events), (sig, signals)):
                while s.poll(0):
                    frames = s.recv_multipart()
                    if s is md:
                        out.append(wire.decode(frames).events.copy())
                    else:
                        out.append(decode_signal(frames[1]).copy())
                    last = time.monotonic()
            time.sleep(0.005)
        log = proc.communicate(timeout=10)[0].decode()
        assert proc.returncode == 0, log
        n_msg = sum(1 for _ in events)
        while daemon.metrics.totals["messages"] < n_msg and time.monotonic() < end:
            time.sleep(0.01)
        time.sleep(0.3)
        while sig.poll(50):
            signals.append(decode_signal(sig.recv_multipart()[1]).copy())
        conditions = daemon.metrics.conditions
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        daemon.request_stop()
        thread.join(10)
        md.close()
        sig.close()
        ctx.term()
    assert "sent" in log
    ev = np.concatenate(events)
    assert daemon.metrics.totals["events"] == len(ev)
    assert int((ev["action"] == ACTION_CLEAR).sum()) == 3  # first, and after each lost packet
    assert conditions.labels("seq_gap")._value.get() == 2
    module, manifest = load_model(artifact)
    expected = backtest_probs(ev, module, manifest, 1)
    sigs = np.concatenate(signals)
    assert len(sigs) > 10
    for s in sigs:
        key = (int(s["instrument"]), int(s["seq"]))
        assert key in expected, f"daemon signal {key} has no window in the backtest"
        np.testing.assert_allclose(s["prob"], expected[key], atol=PROB_ATOL)
    assert int(sigs["seq"].max()) == max(k[1] for k in expected)


def test_daemon_reads_the_version_header(artifact, ipc_dir):  # noqa: F811
    """The same events with and without the version header give the same signals; another
    version's header and a stray middle frame are dropped, counted by reason."""
    from lobstream.replay.feed.synthetic import synthetic_events
    from tests.test_daemon import Running

    symbols = ["AAA"]
    events = synthetic_events(600, n_instruments=1, seed=3, levels=4, snapshot_every=200)
    events["ts_recv"] = time.monotonic_ns()
    msgs = [events[k : k + 1] for k in range(len(events))]
    run = Running(make_cfg(ipc_dir, artifact, symbols, ingest={"max_drain": 1}), symbols)
    try:
        n = 0
        for k, ev in enumerate(msgs):
            header = [wire.HEADER] if k % 2 else []  # every other message with the header
            run.send_raw([b"md.AAA", *header, ev.tobytes()])
            n += 1
            if k == 100:
                run.send_raw([b"md.AAA", wire.header(2), ev.tobytes()])
                run.send_raw([b"md.AAA", b"LOB", ev.tobytes()])
                n += 2
        run.wait_messages(n)
        signals, _ = run.collect()
        totals = dict(run.daemon.metrics.totals)
    finally:
        run.stop()
    assert totals["rejected.version"] == 1 and totals["rejected.parts"] == 1
    assert totals["events"] == len(events)
    module, manifest = load_model(artifact)
    expected = backtest_probs(events, module, manifest, 1)
    assert len(signals) > 100
    for s in signals:
        np.testing.assert_allclose(s["prob"], expected[(0, int(s["seq"]))], atol=PROB_ATOL)
