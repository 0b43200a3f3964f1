"""``lobstream serve`` fed by ``lobstream feed binance``, both as the processes a user starts,
against the loopback exchange replaying a real recording with every kind of fault the
exchange can inject, one after the other: the daemon's signals equal the backtest of what the
feed recorded.

Slow (two processes start, the daemon loads its kernels); bounded by the recording's first
``MESSAGES`` messages and by a deadline on every wait; the feed and the daemon stop on SIGTERM.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest
import torch
import zmq

pytest.importorskip("websockets")
pytest.importorskip("aiohttp")

from lobstream.bench.harness import (  # noqa: E402
    daemon_tables,
    lobstream_cmd,
    spawn,
    spawn_daemon,
    stop_process,
    write_config,
)
from lobstream.engine.signals import decode as decode_signal  # noqa: E402
from lobstream.kernels import wire  # noqa: E402
from lobstream.kernels.dtypes import ACTION_CLEAR, ACTION_TRADE  # noqa: E402
from lobstream.kernels.registry import Registry  # noqa: E402
from lobstream.live.loopback import Fault, LoopbackExchange  # noqa: E402
from lobstream.models.artifact import export_model  # noqa: E402
from lobstream.models.zoo import build_model  # noqa: E402
from lobstream.replay.readers import binance as binance_reader  # noqa: E402
from lobstream.testkit.backtest import backtest_files  # noqa: E402
from tests.test_daemon import PROB_ATOL  # noqa: E402
from tests.test_live_sync import RECORDINGS, recording  # noqa: E402

pytestmark = pytest.mark.slow

T, L = 10, 2
MESSAGES = 4000  # of the recording, after the pre-roll
DEADLINE_S = 240.0
# (of the 1,398 depth diffs streamed) diff 200: a malformed message before it (nothing lost);
# 300: dropped (gap, resync); the third snapshot request answers with an older book (refused,
# fetched again); 600: the connection closes, 5 messages lost while away; 800: arrives as
# malformed JSON (lost: a gap); 1000: the stream stalls, 3 lost
FAULTS = [
    Fault("garbage", 200),
    Fault("drop", 300),
    Fault("stale", 2, book_at=590),
    Fault("close", 600, lose=5),
    Fault("corrupt", 800),
    Fault("stall", 1000, seconds=4.0, lose=3),
]
N_LOSSES = 4  # drop, close, corrupt, stall


def _model(path, events) -> None:
    """A small CNN with z-score parameters of the recording's order (prices ~6e5 ticks), so
    its probabilities move with the book instead of saturating."""
    book = events[(events["action"] != ACTION_CLEAR) & (events["action"] != ACTION_TRADE)]
    manifest = {
        "feature": {
            "kind": "zscore",
            "params": [float(np.median(book["price"])), 2000.0, 1.0, 2.0],
        },
        "label": {"horizon": 5, "unit": "events", "alpha": 1e-5, "smoothing": "mean"},
        "trained_on": {"note": "untrained test model"},
        "metrics": {},
    }
    torch.manual_seed(0)
    model = build_model("cnn", T=T, levels=L, channels=(4,), hidden=8)
    export_model(model.eval(), path, manifest)


def _logs(folder) -> str:
    return "\n".join(
        f"--- {name}\n" + (folder / name).read_text()[-3000:] for name in ("feed.log", "serve.log")
    )


def _sub(ctx, endpoint: str, topic: bytes):
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 0)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SUBSCRIBE, topic)
    s.connect(endpoint)
    return s


def test_serve_fed_by_feed_equals_backtest_of_the_recording(data_dir, ipc_dir, tmp_path):
    # USD-M: its REST snapshot carries the exchange's time (a spot one received before any
    # trade is stamped 0 by the reader's rule, which the daemon refuses as a jump)
    market, _, sym, tick = RECORDINGS["usdm"]
    path = recording(data_dir, "usdm")
    symbol = f"binance-futures:{sym}"  # the reader's key: the feed's topic, the daemon's name
    model = tmp_path / "cnn.pt"
    _model(model, np.concatenate(list(binance_reader.read(path, Registry()))))
    md, sig = f"ipc://{ipc_dir}/md", f"ipc://{ipc_dir}/sig"
    tables = daemon_tables(
        model, [symbol], md, sig, window=T, levels=L, tick_size=float(tick),
        model={"max_batch": 8}, ingest={"mode": "connect", "max_drain": 1},
        publish={"status_interval_s": 0.1},
    )  # fmt: skip
    config = write_config(tmp_path, tables)
    rec = tmp_path / "rec"
    exchange = LoopbackExchange(
        [path], market=market, symbol=sym, tick_size=tick, start=200, faults=FAULTS,
        max_messages=MESSAGES, wait_snapshots=True,
    ).start()  # fmt: skip
    feed_cmd = [
        *lobstream_cmd(sys.executable), "feed", "binance", "--market", market, "--symbols", sym,
        "--to", md, "--record", str(rec), "--ws-url", exchange.ws_url, "--rest-url",
        exchange.rest_url, "--metrics", "", "--snapshot-interval-s", "0.02", "--stall-s", "1.5",
        "--snapshot-limit", "5000", "--subscribers", "2", "--wait", "120", "--lossless",
        "--max-chunk", "1",
        "--json",
    ]  # fmt: skip
    ctx = zmq.Context()
    md_sub, sig_sub = _sub(ctx, md, wire.TOPIC_PREFIX), _sub(ctx, sig, b"")
    daemon = feed = None
    n_msg, n_ev, signals, status = 0, 0, [], {}
    try:
        daemon = spawn_daemon(config, tmp_path / "serve.log")
        feed = spawn(feed_cmd, tmp_path / "feed.log")
        end = time.monotonic() + DEADLINE_S
        last_md = time.monotonic()

        def take(timeout_ms: int) -> None:
            nonlocal n_msg, n_ev, status, last_md
            poller = zmq.Poller()
            poller.register(md_sub, zmq.POLLIN)
            poller.register(sig_sub, zmq.POLLIN)
            for s, _ in poller.poll(timeout_ms):
                while s.poll(0):
                    topic, payload = s.recv_multipart()
                    if s is md_sub:
                        n_msg += 1
                        n_ev += len(payload) // wire.ITEMSIZE
                        last_md = time.monotonic()
                    elif topic == b"status":
                        status = json.loads(payload)
                    else:
                        signals.append(decode_signal(payload).copy())

        # until the exchange has sent everything and the feed has gone quiet
        while time.monotonic() < end and feed.poll() is None and daemon.poll() is None:
            take(50)
            if exchange.done.is_set() and time.monotonic() - last_md > 1.5:
                break
        assert exchange.done.is_set(), _logs(tmp_path)
        assert stop_process(feed, "feed", 10) == 0, _logs(tmp_path)
        # ... and the daemon has taken every message the feed published
        while time.monotonic() < end and status.get("counts", {}).get("messages", 0) < n_msg:
            take(50)
        quiet = time.monotonic()
        while time.monotonic() - quiet < 0.5 and time.monotonic() < end:
            k = len(signals)
            take(50)
            if len(signals) > k:
                quiet = time.monotonic()
        assert stop_process(daemon, "daemon", 10) == 0
    finally:
        stop_process(feed, "feed")
        stop_process(daemon, "daemon")
        exchange.stop()
        md_sub.close()
        sig_sub.close()
        ctx.term()

    final = json.loads((tmp_path / "feed.log").read_text().strip().splitlines()[-1])
    c = final["counts"]
    # a loaded machine may make the stream look silent once more (another stall, which may
    # lose a message in flight): at least the faults injected, each loss resynced
    assert c["gaps"] >= N_LOSSES and c["resyncs"] == c["gaps"] and c["stale_snapshots"] == 1, c
    r = c["reconnects"]
    assert r["closed"] == 1 and r["stall"] >= 1 and r["error"] == r["rollover"] == 0, c
    assert c["malformed"] == {"bad_json": 2}, c
    counts = status["counts"]
    nonzero = {k: v for k, v in counts.items() if v}
    assert counts["messages"] == n_msg and counts["events"] == n_ev, nonzero
    assert not any(k.startswith("rejected.") for k in nonzero), nonzero
    # the daemon saw each loss (a refused stale snapshot skips a sequence number too) ...
    assert counts["book.seq_gap"] == c["gaps"] + c["stale_snapshots"], counts
    assert status["instruments"][symbol]["state"] == "healthy"  # ... and each heal

    files = sorted(rec.glob("*.gz"))
    result, _, reg = backtest_files(files, model)
    assert [inst.symbol for inst in reg] == [symbol]
    recorded = np.concatenate(list(binance_reader.read(files[0], Registry())))
    assert len(recorded) == n_ev  # the recording is what was published
    ok = ~np.isnan(result.probs[:, 0])
    keys = zip(result.meta["instrument"][ok].tolist(), result.meta["seq"][ok].tolist(), strict=True)
    expected = dict(zip(keys, result.probs[ok], strict=True))
    sigs = np.concatenate(signals)
    assert len(sigs) > 500
    for s in sigs:
        key = (int(s["instrument"]), int(s["seq"]))
        assert key in expected, f"daemon signal {key} has no window in the backtest"
        np.testing.assert_allclose(s["prob"], expected[key], atol=PROB_ATOL)
    assert np.ptp(sigs["prob"][:, 2]) > 1e-3  # the probabilities move: the check can fail
    # signals after the last resync, to the end of what was recorded
    clears = recorded["seq"][recorded["action"] == ACTION_CLEAR]
    assert len(clears) == 1 + c["gaps"] + c["stale_snapshots"]
    assert int(sigs["seq"].max()) > int(clears.max())
    assert int(sigs["seq"].max()) == max(k[1] for k in expected)
