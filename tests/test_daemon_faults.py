"""Faults the daemon serves through, over ipc:// on a thread of this process:
its subscriber disappears and returns, the feed pauses and resumes, one instrument floods ten
times the others' rate, and a model reload happens while events flow. Each fault is counted in
the metrics (heartbeat ``counts`` and Prometheus), and none loses an accepted event or leaves an
instrument stale.

"No accepted event lost" is checked the same way in every test (:func:`check_nothing_lost`):
the daemon's ``events`` total is every event sent, each instrument's ring holds exactly the rows
the in-process backtest makes of the same events, every row past the first window was either
signalled or counted as conflated (``signals + conflated == sum(rows - (T - 1))``), each
instrument's newest signal is its newest window, every signal received equals the backtest's
probabilities for its (instrument, seq), and every instrument ends healthy.

Every wait has a deadline and assertions are on counts, sequence numbers and states only, never
on elapsed times. The one-minute pause is ``-m slow``; the default suite pauses 2.5 s.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from lobstream.bench.harness import metric_values
from lobstream.engine.daemon import Daemon, load_checked_model
from lobstream.engine.signals import decode
from lobstream.kernels.book import new_report
from lobstream.kernels.dtypes import FLAG_LAST, SIGNAL_DTYPE
from lobstream.models.artifact import load_model, sha256_file
from lobstream.models.manifest import spec_from_manifest
from lobstream.replay.backtest.run import rows_from_events
from lobstream.replay.feed.synthetic import synthetic_events
from tests.test_daemon import PROB_ATOL, T, backtest_probs, export_test_model, make_cfg

WAIT_S = 60.0  # deadline of any one wait (a loaded 2-core machine); tests end well before


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "cnn.pt"
    export_test_model(path)
    return path


def packets(events: np.ndarray) -> list[np.ndarray]:
    """Contract-4 messages: one per packet (ends at a LAST event or an instrument change)."""
    inst = events["instrument"]
    end = (events["flags"] & FLAG_LAST) != 0
    end[:-1] |= inst[1:] != inst[:-1]
    cuts = np.flatnonzero(end) + 1
    return [p for p in np.split(events, cuts) if len(p)]


def until(cond, what: str, timeout_s: float = WAIT_S, thread=None) -> None:
    """Wait for ``cond()`` with a deadline (polls every 10 ms)."""
    end = time.monotonic() + timeout_s
    while not cond():
        assert thread is None or thread.is_alive(), "daemon thread died"
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


class FaultRun:
    """A daemon on a thread, a feeder XPUB and a signal SUB that can come and go.

    Where the daemon's publisher connects (``publish.mode = "connect"``) the SUB binds, so
    closing it takes the endpoint away and opening a new one brings it back."""

    def __init__(self, cfg, symbols) -> None:
        self.cfg = cfg
        self.symbols = list(symbols)
        self.ctx = zmq.Context()
        self.feed: zmq.Socket | None = None
        self.open_feed(wait=False)
        self.daemon = Daemon(cfg, self.symbols, load_checked_model(cfg))
        self.thread = threading.Thread(target=self.daemon.run, name="daemon", daemon=True)
        self.thread.start()
        assert self.daemon.started.wait(180), "daemon did not open its sockets"
        self.wait_subscribed()
        self.sub: zmq.Socket | None = None
        self.sent = 0  # messages sent
        self.heartbeats: list[dict] = []
        self.open_sub()

    def open_feed(self, wait: bool = True) -> None:
        """The feed binds (again); with ``wait``, returns once the daemon subscribed to it."""
        assert self.feed is None
        self.feed = self.ctx.socket(zmq.XPUB)
        self.feed.setsockopt(zmq.SNDHWM, 0)
        self.feed.setsockopt(zmq.LINGER, 0)
        self.feed.bind(self.cfg.ingest.endpoints[0])
        if wait:
            self.wait_subscribed()

    def wait_subscribed(self) -> None:
        # the daemon's subscription reaching the XPUB: no market data sent now is lost
        self.feed.setsockopt(zmq.RCVTIMEO, 10_000)
        assert self.feed.recv()[:1] == b"\x01"

    def close_feed(self) -> None:
        self.feed.close(0)
        self.feed = None

    @property
    def totals(self):
        return self.daemon.metrics.totals

    def open_sub(self) -> None:
        """A new subscriber; returns once a heartbeat came (its subscription is through)."""
        assert self.sub is None
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 0)  # the test reads in bursts: never drop a signal
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        if self.cfg.publish.mode == "connect":
            self.sub.bind(self.cfg.publish.endpoint)
        else:
            self.sub.connect(self.cfg.publish.endpoint)
        end = time.monotonic() + WAIT_S
        while True:
            assert time.monotonic() < end, "no heartbeat on the new subscriber"
            if self.sub.poll(100):
                topic, payload = self.sub.recv_multipart()
                if topic == b"status":
                    self.heartbeats.append(json.loads(payload))
                    return

    def close_sub(self) -> None:
        self.sub.close(0)
        self.sub = None

    def send(self, msgs: list[np.ndarray]) -> None:
        for p in msgs:
            topic = b"md." + self.symbols[int(p["instrument"][0])].encode()
            self.feed.send_multipart([topic, p.tobytes()])
        self.sent += len(msgs)

    def pending(self) -> int:
        """Rows past the first window neither signalled nor counted as conflated yet."""
        rows = int(np.maximum(self.daemon.ring.count - (self.daemon.T - 1), 0).sum())
        return rows - (self.totals["signals"] + self.totals["conflated"])

    def wait_settled(self) -> None:
        """Every message sent so far taken, applied and inferred (its signals sent)."""
        until(lambda: self.totals["messages"] >= self.sent, "messages", thread=self.thread)
        until(lambda: self.pending() == 0, "every window inferred", thread=self.thread)

    def collect(self, idle_s: float = 0.3) -> np.ndarray:
        """Signals received until ``idle_s`` passes without one (bounded by WAIT_S)."""
        recs = []
        last = time.monotonic()
        end = last + WAIT_S
        while time.monotonic() - last < idle_s and time.monotonic() < end:
            if not self.sub.poll(20):
                continue
            topic, payload = self.sub.recv_multipart()
            if topic == b"status":
                self.heartbeats.append(json.loads(payload))
                continue
            recs.append(decode(payload).copy())
            last = time.monotonic()
        return np.concatenate(recs) if recs else np.zeros(0, SIGNAL_DTYPE)

    def take(self) -> np.ndarray:
        """Signals already queued at the subscriber (non-blocking, bounded)."""
        recs = []
        for _ in range(100_000):
            try:
                topic, payload = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if topic == b"status":
                self.heartbeats.append(json.loads(payload))
            else:
                recs.append(decode(payload).copy())
        return np.concatenate(recs) if recs else np.zeros(0, SIGNAL_DTYPE)

    def scrape(self) -> dict:
        return metric_values(f"127.0.0.1:{self.daemon.metrics_port}")

    def stop(self) -> None:
        self.daemon.request_stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "daemon did not stop"
        if self.sub is not None:
            self.sub.close(0)
        if self.feed is not None:
            self.feed.close(0)
        self.ctx.term()


def prom_peers(run: FaultRun, side: str) -> tuple[float, float, float]:
    """Peers of ``side`` on the Prometheus endpoint: (connected, disconnected, now)."""
    prom = run.scrape()
    return (
        prom[f'lobstream_{side}_peer_events_total{{event="connected"}}'],
        prom[f'lobstream_{side}_peer_events_total{{event="disconnected"}}'],
        prom[f"lobstream_{side}_peers"],
    )


def backtest_rows(events: np.ndarray, manifest: dict, n: int) -> np.ndarray:
    """Rows per instrument the backtest makes of ``events``."""
    counts = np.zeros(n, np.int64)
    spec = spec_from_manifest(manifest)
    for _, meta, _ in rows_from_events([events], spec, n, new_report()):
        counts += np.bincount(meta["instrument"], minlength=n)
    return counts


def check_nothing_lost(run: FaultRun, events: np.ndarray, signals, expected: dict) -> None:
    """Every accepted event applied, every window inferred, newest signals are newest windows.

    ``expected``: model_id -> {(instrument, seq): probabilities} of the in-process backtest.
    """
    d = run.daemon
    n = len(run.symbols)
    any_expected = next(iter(expected.values()))
    assert run.totals["events"] == len(events)
    assert run.totals["rejected.bad_event"] == 0 and run.totals["book.seq_gap"] == 0
    np.testing.assert_array_equal(d.ring.count, backtest_rows(events, d.model.manifest, n))
    assert run.pending() == 0
    assert not d.book.stale.any()
    assert len({(int(s["instrument"]), int(s["seq"])) for s in signals}) == len(signals)
    for s in signals:
        key = (int(s["instrument"]), int(s["seq"]))
        want = expected[int(s["model_id"])]
        assert key in want, f"daemon signal {key} has no window in the backtest"
        np.testing.assert_allclose(s["prob"], want[key], atol=PROB_ATOL)
    for i in range(n):
        mine = signals[signals["instrument"] == i]
        assert len(mine), f"{run.symbols[i]}: no signal"
        newest = max(k[1] for k in any_expected if k[0] == i)
        assert int(mine["seq"].max()) == newest, run.symbols[i]
    states = {s: v["state"] for s, v in run.heartbeats[-1]["instruments"].items()}
    assert set(states.values()) == {"healthy"}, states


def expected_for(model_path: Path, events: np.ndarray, n: int) -> dict:
    module, manifest = load_model(model_path)
    return {int(sha256_file(model_path)[:8], 16): backtest_probs(events, module, manifest, n)}


# --- the subscriber disappears and returns ------------------------------------------------


@pytest.mark.parametrize("mode", ["bind", "connect"])
def test_subscriber_disappears_and_returns(artifact, ipc_dir, mode):
    symbols = ["AAA", "BBB", "CCC"]
    events = synthetic_events(4500, n_instruments=3, seed=21, levels=4, snapshot_every=300)
    msgs = packets(events)
    third = len(msgs) // 3
    cfg = make_cfg(
        ipc_dir,
        artifact,
        symbols,
        publish={"mode": mode},
        metrics={"address": "127.0.0.1:0"},
    )
    run = FaultRun(cfg, symbols)
    try:
        until(lambda: run.totals["publish.peer_connected"] == 1, "the first peer counted")
        run.send(msgs[:third])
        run.wait_settled()
        got = [run.collect()]
        assert len(got[0]) > 0
        # the subscriber goes away; the daemon keeps serving (and counts it)
        run.close_sub()
        until(lambda: run.totals["publish.peer_disconnected"] == 1, "the disconnect counted")
        signals_before = run.totals["signals"]
        run.send(msgs[third : 2 * third])
        run.wait_settled()
        assert run.totals["signals"] > signals_before  # signalled to nobody, not stuck
        # a new one comes: signals flow to it
        run.open_sub()
        until(lambda: run.totals["publish.peer_connected"] == 2, "the new peer counted")
        run.send(msgs[2 * third :])
        run.wait_settled()
        got.append(run.collect())
        assert len(got[1]) > 0
        assert run.daemon.metrics.peers["publish"]._value.get() == 1
        counts = run.heartbeats[-1]["counts"]
        assert counts["publish.peer_connected"] == 2
        assert counts["publish.peer_disconnected"] == 1
        assert prom_peers(run, "publish") == (2, 1, 1)
        assert run.totals["ingest.peer_disconnected"] == 0  # the feed stayed
        expected = expected_for(artifact, events, 3)
        check_nothing_lost(run, events, np.concatenate(got), expected)
        # the newest signals went to the new subscriber
        for i in range(3):
            newest = max(k[1] for k in next(iter(expected.values())) if k[0] == i)
            assert got[1]["seq"][got[1]["instrument"] == i].max() == newest
    finally:
        run.stop()


# --- the feed pauses and resumes -------------------------------------------------------------


@pytest.mark.parametrize(
    "pause_s, feed_gone, warm",
    [
        (2.5, False, False),
        (2.5, True, False),
        (2.5, False, True),
        pytest.param(60.0, False, False, marks=pytest.mark.slow),
    ],
    ids=["pause-2.5s", "feed-gone-2.5s", "causal-kept-warm-2.5s", "pause-60s"],
)
def test_feed_pauses_and_resumes(artifact, ipc_dir, tmp_path, pause_s, feed_gone, warm):
    """The feed goes quiet (``feed_gone``: its socket closes, and a new one binds at the end,
    as a feed handler restarting) and resumes where it stopped. ``warm``: a causal model run
    incrementally, kept warm (``model.keep_warm_ms``) by throwaway calls during the pause,
    which must not move any instrument's state."""
    symbols = ["AAA", "BBB", "CCC"]
    events = synthetic_events(3000, n_instruments=3, seed=22, levels=4, snapshot_every=300)
    half = len(events) // 2
    # exchange time passes during the pause as well
    events["ts_event"][half:] += int(pause_s * 1e9)
    msgs_a, msgs_b = packets(events[:half]), packets(events[half:])
    model_path, model_t = artifact, {}
    if warm:
        from tests.test_daemon_causal import TC, export_causal

        model_path = tmp_path / "causal.pt"
        export_causal(model_path)
        model_t = {"window": TC, "keep_warm_ms": 100.0}
    cfg = make_cfg(
        ipc_dir,
        model_path,
        symbols,
        ingest={"idle_after_s": 1.0},
        metrics={"address": "127.0.0.1:0"},
        model=model_t,
    )
    run = FaultRun(cfg, symbols)
    try:
        run.send(msgs_a)
        run.wait_settled()
        got = [run.collect()]
        assert run.totals["ingest.idle_periods"] == 0
        paused_at = time.monotonic()
        until(lambda: run.totals["ingest.peer_connected"] == 1, "the feed counted")
        if feed_gone:
            run.close_feed()
            until(lambda: run.totals["ingest.peer_disconnected"] == 1, "the feed's going")
        # counted while it lasts, not only when it ends
        until(lambda: run.totals["ingest.idle_periods"] == 1, "the pause counted", pause_s)
        assert run.daemon.metrics.idle._value.get() == 1
        while time.monotonic() < paused_at + pause_s:  # the rest of the pause, heartbeats on
            got.append(run.collect(idle_s=0.1))
        if warm:
            assert run.daemon.model.inference == "incremental"
            until(lambda: run.totals["keep_warm_calls"] > 0, "a keep-warm call", pause_s)
        during = run.heartbeats[-1]
        assert during["counts"]["ingest.idle_periods"] == 1
        assert during["counts"]["ingest.resumes"] == 0
        # a quiet market is not a broken book: nothing is stale while it is quiet
        assert {v["state"] for v in during["instruments"].values()} == {"healthy"}
        if feed_gone:
            run.open_feed()  # the daemon reconnected and subscribed again
        run.send(msgs_b)
        run.wait_settled()
        got.append(run.collect())
        assert run.totals["ingest.peer_connected"] == 1 + feed_gone
        assert run.totals["ingest.peer_disconnected"] == int(feed_gone)
        assert prom_peers(run, "ingest") == (1 + feed_gone, int(feed_gone), 1)
        assert run.totals["ingest.idle_periods"] == 1
        assert run.totals["ingest.resumes"] == 1
        assert run.daemon.metrics.idle._value.get() == 0
        # the longest gap is the pause's, so more than the idle threshold
        assert run.totals["ingest.longest_gap_ms"] > 1000
        prom = run.scrape()
        assert prom["lobstream_ingest_idle_periods_total"] == 1
        assert prom["lobstream_ingest_resumes_total"] == 1
        assert prom["lobstream_ingest_idle"] == 0
        assert prom["lobstream_ingest_longest_gap_seconds"] > 1.0
        assert run.heartbeats[-1]["counts"]["ingest.resumes"] == 1
        sig = np.concatenate(got)
        # signals resumed after the pause for every instrument (its events have later ts)
        before = events["ts_event"][:half].max()
        for i in range(3):
            assert (sig["ts_event"][sig["instrument"] == i] > before).any(), symbols[i]
        check_nothing_lost(run, events, sig, expected_for(model_path, events, 3))
    finally:
        run.stop()


# --- one instrument floods ten times the others' rate ------------------------------------------


@pytest.mark.parametrize("overlap_batch", [0, 1], ids=["inline", "inference-thread"])
def test_flooding_instrument_does_not_starve_the_others(artifact, ipc_dir, overlap_batch):
    symbols = ["FLOOD", "Q1", "Q2", "Q3", "Q4"]
    ticks = 150
    flood = packets(synthetic_events(ticks * 10 * 3, n_instruments=1, seed=23, levels=4))
    quiet_ev = synthetic_events(ticks * 4 * 3, n_instruments=4, seed=24, levels=4)
    quiet_ev["instrument"] += 1
    quiet = [packets(quiet_ev[quiet_ev["instrument"] == i]) for i in range(1, 5)]
    ticks = min(ticks, len(flood) // 10, *(len(q) for q in quiet))
    # each tick: ten packets of FLOOD, one of every other instrument
    schedule = [
        [*flood[10 * k : 10 * k + 10], *(q[k] for q in quiet)] for k in range(ticks)
    ]  # fmt: skip
    events = np.concatenate([p for tick in schedule for p in tick])
    # max_batch 2 of 5 instruments: FLOOD (id 0) and Q1, due after every round, would take
    # every batch but for the scheduler's round-robin. max_drain = one tick's messages: the
    # daemon runs at least a round per tick however far behind the feed it is
    cfg = make_cfg(
        ipc_dir,
        artifact,
        symbols,
        ingest={"max_drain": 14},
        model={"max_batch": 2, "overlap_batch": overlap_batch},
    )
    run = FaultRun(cfg, symbols)
    try:
        got = []
        for k, tick in enumerate(schedule):  # as fast as the feeder can: a flood
            run.send(tick)
            if k % 10 == 9:
                got.append(run.take())  # read as it goes
        run.wait_settled()
        got.append(run.collect())
        sig = np.concatenate(got)
        check_nothing_lost(run, events, sig, expected_for(artifact, events, len(symbols)))
        # the flood was conflated (counted), the others were served all along
        assert run.totals["conflated"] > 0
        hb = run.heartbeats[-1]["instruments"]
        conflated = {s: v["rows"] - (T - 1) - v["signals"] for s, v in hb.items()}
        assert sum(conflated.values()) == run.totals["conflated"]
        assert conflated["FLOOD"] > 0
        for i, s in enumerate(symbols):
            n_sig = int((sig["instrument"] == i).sum())
            assert n_sig == hb[s]["signals"], s  # every signal reached the subscriber
            if i and overlap_batch == 0:
                # inline, each round (one at least per tick: max_drain) infers two of the due
                # round-robin, so every quiet instrument is served all along the flood: ~57
                # signals each here; without the round-robin Q2..Q4 get 1-2, at the end. (On
                # the inference thread the number of calls depends on thread timing, so there
                # only its newest window is asserted, in check_nothing_lost.)
                assert n_sig >= ticks // 10, s
    finally:
        run.stop()


# --- a reload while events flow ------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, overlap_batch",
    [("cnn", 0), ("cnn", 1), ("cnn_causal", 1)],
    ids=["inline", "inference-thread", "causal-incremental"],
)
def test_reload_under_load_loses_no_event(artifact, ipc_dir, tmp_path, arch, overlap_batch):
    from tests.test_daemon_causal import TC, export_causal

    model_path = tmp_path / "live.pt"
    if arch == "cnn":
        shutil.copy(artifact, model_path)
        window, export_new = T, export_test_model
    else:  # incremental: the new runner restarts every slot from its ring window
        export_causal(model_path)
        window, export_new = TC, export_causal
    symbols = ["AAA", "BBB", "CCC"]
    events = synthetic_events(9000, n_instruments=3, seed=25, levels=4, snapshot_every=300)
    msgs = packets(events)
    tail = len(msgs) - 300  # always sent after the swap: events flow on the new model
    model_t = {"overlap_batch": overlap_batch, "window": window}
    cfg = make_cfg(ipc_dir, model_path, symbols, model=model_t)
    old = expected_for(model_path, events, 3)
    run = FaultRun(cfg, symbols)
    try:
        got = []
        k, step = 0, 20

        def send_some() -> None:
            nonlocal k
            run.send(msgs[k : k + step])
            k += step
            got.append(run.take())
            time.sleep(0.003)

        for _ in range(30):
            send_some()
        # a refused reload (another window) under load keeps the running model
        export_test_model(model_path, seed=1, T=12)
        run.daemon.request_reload()
        while run.totals["reloads.refused"] == 0 and k < tail // 2:
            send_some()
        until(lambda: run.totals["reloads.refused"] == 1, "the refused reload")
        # an acceptable one (same spec, other weights) swaps while events keep coming
        export_new(model_path, seed=2)
        new = expected_for(model_path, events, 3)
        new_id = next(iter(new))
        run.daemon.request_reload()
        while run.daemon.model.model_id != new_id and k < tail:
            send_some()
        until(lambda: run.daemon.model.model_id == new_id, "the swap", thread=run.thread)
        while k < len(msgs):
            send_some()
        run.wait_settled()
        got.append(run.collect())
        sig = np.concatenate(got)
        assert run.totals["reloads.ok"] == 1 and run.totals["reloads.refused"] == 1
        assert run.daemon.model.inference == ("incremental" if arch != "cnn" else "full-window")
        assert run.heartbeats[-1]["counts"]["reloads.ok"] == 1
        ids = set(sig["model_id"].tolist())
        assert ids == {next(iter(old)), new_id}, ids  # both models signalled, no other
        # per instrument the old model's signals all come before the new one's
        for i in range(3):
            mine = sig[sig["instrument"] == i]
            switched = np.flatnonzero(mine["model_id"] == new_id)
            assert (mine["model_id"][switched[0] :] == new_id).all()
            assert (np.diff(mine["seq"].astype(np.int64)) > 0).all()
        check_nothing_lost(run, events, sig, {**old, **new})
    finally:
        run.stop()


def test_idle_after_s_is_checked(artifact, ipc_dir):
    from lobstream.engine.config import ConfigError

    assert make_cfg(ipc_dir, artifact, ["AAA"]).ingest.idle_after_s == 5.0
    assert make_cfg(ipc_dir, artifact, ["AAA"], ingest={"idle_after_s": 0}).ingest.idle_after_s == 0
    for bad in (-1.0, float("inf")):
        with pytest.raises(ConfigError, match="idle_after_s"):
            make_cfg(ipc_dir, artifact, ["AAA"], ingest={"idle_after_s": bad})
