"""The live Binance connector end to end, over real sockets on loopback: a websocket and a REST
server (the loopback exchange) replay the real recordings with injected faults, the connector
syncs, publishes on ipc:// and records; a ZeroMQ subscriber takes what it published.

For each fault: the top-10 book of what was published equals the Binance reader's book over the
same recording at every state after each (re)sync, the last run reaches the recording's end
(nothing lost), the counters say what happened, and the recording reads back, through the
Binance reader, as exactly the events that were published. ``tests/test_live_serve.py`` (slow)
runs ``lobstream serve`` fed by ``lobstream feed`` and checks the daemon's signals against the
backtest of the recording.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import numpy as np
import pytest
import zmq

pytest.importorskip("websockets")
pytest.importorskip("aiohttp")

from lobstream.kernels import wire  # noqa: E402
from lobstream.kernels.dtypes import ACTION_CLEAR, EVENT_DTYPE  # noqa: E402
from lobstream.kernels.registry import Registry  # noqa: E402
from lobstream.live.binance import BinanceFeed, FeedConfig  # noqa: E402
from lobstream.live.loopback import Fault, LoopbackExchange  # noqa: E402
from lobstream.replay.readers import binance as binance_reader  # noqa: E402
from tests.test_live_sync import (  # noqa: E402
    RECORDINGS,
    assert_live_matches,
    reader_states,
    recording,
)

STATUS = b"feed.status"
NO_TS_RECV = [n for n in EVENT_DTYPE.names if n != "ts_recv"]


class Run:
    """A loopback exchange, a feed on a thread and a subscriber, until the exchange has sent
    everything and the feed has gone quiet (bounded by ``timeout_s``)."""

    def __init__(self, data_dir, ipc_dir, tmp_path, name="spot", faults=(), start=100,
                 record=True, timeout_s=60.0, **cfg):  # fmt: skip
        market, _, sym, tick = RECORDINGS[name]
        self.path = recording(data_dir, name)
        self.exchange = LoopbackExchange(
            [self.path],
            market=market,
            symbol=sym,
            tick_size=tick,
            start=start,
            faults=faults,
            wait_snapshots=True,
        ).start()
        endpoint = f"ipc://{ipc_dir}/md"
        self.record_dir = tmp_path / "rec" if record else None
        kw = dict(
            snapshot_interval_s=0.02, stall_s=5.0, backoff_min_s=0.05, backoff_max_s=0.2,
            heartbeat_s=0.1, subscribers=2, wait_s=10.0, max_failures=20,
            snapshot_limit=5000,
        )  # fmt: skip
        kw.update(cfg)
        self.cfg = FeedConfig(
            market=market, symbols=(sym,), endpoint=endpoint, ws_url=self.exchange.ws_url,
            rest_url=self.exchange.rest_url,
            record=str(self.record_dir) if record else None, **kw,
        )  # fmt: skip
        self.feed = BinanceFeed(self.cfg)
        self.final: dict = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, wire.TOPIC_PREFIX)
        self.sub.setsockopt(zmq.SUBSCRIBE, STATUS)
        self.thread.start()
        try:
            assert self.feed.started.wait(10), "the feed did not open its socket"
            self.sub.connect(endpoint)
            self.events, self.status = self._collect(timeout_s)
        finally:
            self.feed.request_stop()
            self.thread.join(10)
            self.exchange.stop()
            self.sub.close(0)
            self.ctx.term()
        assert not self.thread.is_alive(), "the feed did not stop"
        if self.feed.error is not None:
            raise self.feed.error

    def _run(self) -> None:
        try:
            self.final = self.feed.run()
        except BaseException as exc:  # reported by the test thread
            self.feed.error = exc

    def _collect(self, timeout_s: float):
        evs, status = [], []
        end = time.monotonic() + timeout_s
        last = time.monotonic()
        while time.monotonic() < end and self.thread.is_alive():
            if self.sub.poll(20):
                topic, payload = self.sub.recv_multipart()
                if topic == STATUS:
                    status.append(json.loads(payload))
                    continue
                d = wire.decode([topic, payload])
                assert d.reason == wire.REASON_OK
                evs.append(d.events.copy())
                last = time.monotonic()
            elif (
                self.exchange.done.is_set()
                and self.feed.received >= self.exchange.delivered
                and not self.feed._inbox
                and time.monotonic() - last > 0.2
            ):
                break
        assert self.exchange.done.is_set(), "the exchange did not send everything in time"
        return (np.concatenate(evs) if evs else np.zeros(0, EVENT_DTYPE)), status

    @property
    def counts(self) -> dict:
        return self.final["counts"]

    def recorded(self) -> np.ndarray:
        files = sorted(self.record_dir.glob("*.gz"))
        assert files, "nothing recorded"
        reg = Registry()
        return np.concatenate([b for f in files for b in binance_reader.read(f, reg)])


def _check(run: Run, segments: int) -> None:
    assert assert_live_matches(run.events, reader_states(run.path)) == segments
    assert int((run.events["action"] == ACTION_CLEAR).sum()) == segments
    back = run.recorded()
    assert len(back) == len(run.events)
    for name in NO_TS_RECV:
        np.testing.assert_array_equal(back[name], run.events[name], err_msg=name)
    assert (run.events["ts_recv"] > 0).all()
    # the heartbeat said the same on the wire, and the instrument ended live
    last = run.status[-1]
    assert last["instruments"][run.cfg.symbols[0]]["state"] == "live"
    assert run.final["instruments"][run.cfg.symbols[0]]["state"] == "live"


def _expect(counts: dict, **want) -> None:
    got = {k: counts[k] for k in want if k != "reconnects"}
    if "reconnects" in want:
        got["reconnects"] = {k: v for k, v in counts["reconnects"].items() if v}
    assert got == want, counts


def test_dropped_diff_resyncs(data_dir, ipc_dir, tmp_path):
    run = Run(
        data_dir, ipc_dir, tmp_path, faults=[Fault("drop", 300)], metrics_address="127.0.0.1:0"
    )
    _check(run, segments=2)
    _expect(run.counts, gaps=1, resyncs=1, stale_snapshots=0, snapshot_requests=2, reconnects={})
    assert run.counts["messages"] == run.exchange.sent - 1
    assert run.final["instruments"]["BTCUSDT"]["clock_offset_ms"] is not None


def test_malformed_messages_are_counted_and_skipped(data_dir, ipc_dir, tmp_path):
    # garbage before diff 200 costs nothing; diff 400 arriving corrupt is a lost diff
    faults = [Fault("garbage", 200), Fault("corrupt", 400)]
    run = Run(data_dir, ipc_dir, tmp_path, faults=faults)
    _check(run, segments=2)
    _expect(run.counts, gaps=1, resyncs=1, malformed={"bad_json": 2})


def test_closed_connection_reconnects(data_dir, ipc_dir, tmp_path):
    # the first close loses nothing (the id chain runs on over the new connection); the second
    # loses 5 messages while the client is away (a gap, then a resync)
    faults = [Fault("close", 300), Fault("close", 800, lose=5)]
    run = Run(data_dir, ipc_dir, tmp_path, faults=faults)
    _check(run, segments=2)
    _expect(run.counts, gaps=1, resyncs=1, reconnects={"closed": 2})
    assert run.exchange.connections == 3


def test_stalled_stream_reconnects(data_dir, ipc_dir, tmp_path):
    faults = [Fault("stall", 300, seconds=2.0, lose=3)]
    run = Run(data_dir, ipc_dir, tmp_path, faults=faults, stall_s=0.4)
    _check(run, segments=2)
    _expect(run.counts, gaps=1, resyncs=1, reconnects={"stall": 1})


def test_stale_snapshot_is_fetched_again(data_dir, ipc_dir, tmp_path):
    # request 0 syncs, the gap at 300 asks again (request 1 answers with the book before diff
    # 290, older than the diffs held: refused), request 2 resyncs
    faults = [Fault("drop", 300), Fault("stale", 1, book_at=290)]
    run = Run(data_dir, ipc_dir, tmp_path, faults=faults)
    _check(run, segments=3)  # the stale snapshot's own state is an older state of the reader
    _expect(run.counts, gaps=1, resyncs=1, stale_snapshots=1, snapshot_requests=3)


def test_futures_stale_first_snapshot_and_gap(data_dir, ipc_dir, tmp_path):
    # USD-M (pu chaining): the very first snapshot is older than the first diff received
    faults = [Fault("stale", 0, book_at=0), Fault("drop", 500)]
    run = Run(data_dir, ipc_dir, tmp_path, name="usdm", faults=faults, start=200)
    _check(run, segments=3)
    _expect(run.counts, gaps=1, resyncs=1, stale_snapshots=1, snapshot_requests=3)


def test_prometheus_endpoint_and_rollover(data_dir, ipc_dir, tmp_path):
    """A connection older than max_connection_s is replaced (the 24 h cut, shortened); the
    counters are on the Prometheus endpoint while the feed runs."""
    scraped: list[str] = []

    class Scraping(Run):
        def _collect(self, timeout_s):
            out = super()._collect(timeout_s)
            port = self.feed.metrics_port
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                scraped.append(r.read().decode())
            return out

    run = Scraping(data_dir, ipc_dir, tmp_path, metrics_address="127.0.0.1:0", record=False,
                   max_connection_s=0.3)  # fmt: skip
    assert run.counts["reconnects"]["rollover"] >= 1
    text = scraped[0]
    for name in ("messages_total", "gaps_total", "resyncs_total", "reconnects_total",
                 "malformed_total", "clock_offset_seconds", "snapshot_requests_total"):  # fmt: skip
        assert f"lobstream_feed_{name}" in text, name
    assert 'lobstream_feed_reconnects_total{reason="rollover"}' in text
    assert assert_live_matches(run.events, reader_states(run.path)) >= 1
    # the values are the heartbeat's (scraped once everything was taken; only rollovers go on)
    from prometheus_client.parser import text_string_to_metric_families

    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    sym = (("symbol", "BTCUSDT"),)
    inst = run.final["instruments"]["BTCUSDT"]
    for name in ("messages", "gaps", "resyncs", "snapshot_requests"):
        assert got[(f"lobstream_feed_{name}_total", sym)] == inst[name], name
    assert got[("lobstream_feed_events_total", ())] == run.counts["events"]
    assert got[("lobstream_feed_reconnects_total", (("reason", "rollover"),))] >= 1
    offset = got[("lobstream_feed_clock_offset_seconds", sym)]
    assert offset * 1e3 == pytest.approx(inst["clock_offset_ms"], rel=1e-12)


def test_unreachable_exchange_gives_up(ipc_dir):
    from lobstream.live.binance import FeedError

    cfg = FeedConfig(
        market="spot", symbols=("BTCUSDT",), endpoint=f"ipc://{ipc_dir}/md",
        ws_url="ws://127.0.0.1:9", rest_url="http://127.0.0.1:9", backoff_min_s=0.01,
    )  # fmt: skip
    with pytest.raises(FeedError, match="tick sizes"):
        BinanceFeed(cfg).run()
    reg = Registry()
    reg.add("BTCUSDT", "0.01")
    cfg = FeedConfig(**{**cfg.__dict__, "max_failures": 3})
    with pytest.raises(FeedError, match="3 connection attempts"):
        BinanceFeed(cfg, reg).run()
