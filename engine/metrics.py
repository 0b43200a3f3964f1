"""The daemon's Prometheus metrics and its rate-limited log.

Metrics live in their own ``CollectorRegistry`` (so tests and several daemons in one process do
not collide) and every label value is created at start-up, so a scrape shows zeros rather than
missing series. Latencies are Histograms in seconds with microsecond-scale buckets.

The faults the daemon serves through are counted here too: peers of its sockets coming and
going (:class:`PeerMonitor`, a ZeroMQ socket monitor read off the hot path), market-data pauses
and their ends, reloads; the heartbeat's ``counts`` show them from the start, as zeros.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import Counter as PyCounter

import numpy as np
import zmq
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from lobstream.kernels import wire
from lobstream.kernels.dtypes import CODE_NAMES

logger = logging.getLogger(__name__)

# "receive": from the newest event's ts_recv to its messages taken and checked, of which
# "drain" is the taking and checking; "fused": book, rows, selection and model in the one
# compiled call of a quiet round (models.quiet), in place of "book", "gather" and "model"
STAGES = ("receive", "drain", "book", "gather", "model", "fused", "publish", "end_to_end")
# Frame-level rejections (the message is dropped before the book sees it): the wire decoder's
# reasons, a topic not in the registry, and the checks of a message's records as a whole.
FRAME_REASONS = (*wire.REASONS, "unknown_instrument", *wire.CONTENT_REASONS)
# 1 us .. 1 s: the stages of the hot path sit between a few and a few thousand microseconds.
LATENCY_BUCKETS = tuple(m * 10.0**e for e in range(-6, 0) for m in (1.0, 2.0, 5.0)) + (
    1.0,
    2.0,
    5.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# sockets whose peers a PeerMonitor counts: signal subscribers, market-data feeds
PEER_SIDES = {
    "publish": "Signal subscribers",
    "ingest": "Market-data feeds (publishers the ingest socket is connected to)",
}
# heartbeat counts of the faults the daemon serves through (peers, feed pauses)
FAULT_TOTALS = (
    *(f"{side}.peer_{e}" for side in PEER_SIDES for e in ("connected", "disconnected")),
    "ingest.idle_periods",
    "ingest.resumes",
    "ingest.longest_gap_ms",
)


class Metrics:
    """Counters, histograms and gauges of one daemon, plus plain totals for the heartbeat.

    Parameters
    ----------
    namespace : str
        Prefix of every metric name.
    """

    def __init__(self, namespace: str = "lobstream") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, ns = self.registry, namespace
        self.events = Counter("events", "Events received in valid frames", namespace=ns, registry=r)
        self.messages = Counter(
            "messages", "Market-data messages received", namespace=ns, registry=r
        )
        self.rejected = Counter(
            "rejected", "Messages dropped, by reason", ["reason"], namespace=ns, registry=r
        )
        self.conditions = Counter(
            "book_conditions",
            "Conditions reported by the book kernel, by code",
            ["condition"],
            namespace=ns,
            registry=r,
        )
        self.signals = Counter("signals", "Signals published", namespace=ns, registry=r)
        self.conflated = Counter(
            "conflated",
            "Window updates not inferred on their own because a newer window came first",
            namespace=ns,
            registry=r,
        )
        self.model_calls = Counter("model_calls", "Model calls (batches)", namespace=ns, registry=r)
        self.reloads = Counter(
            "model_reloads", "Artifact reloads, by outcome", ["outcome"], namespace=ns, registry=r
        )
        self.stage = Histogram(
            "stage_seconds",
            "Latency of each stage of the hot path",
            ["stage"],
            namespace=ns,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.batch_size = Histogram(
            "batch_size", "Windows per model call", namespace=ns, registry=r, buckets=BATCH_BUCKETS
        )
        self.stale = Gauge(
            "stale_instruments", "Instruments marked stale", namespace=ns, registry=r
        )
        self.backlog = Gauge(
            "drain_backlog",
            "Messages left for the next round by max_drain",
            namespace=ns,
            registry=r,
        )
        # faults the daemon serves through (tests/test_daemon_faults.py)
        self.peer_events_total = {
            side: Counter(
                f"{side}_peer_events",
                f"{who} that connected or disconnected (socket monitor), by event",
                ["event"],
                namespace=ns,
                registry=r,
            )
            for side, who in PEER_SIDES.items()
        }
        self.peers = {
            side: Gauge(f"{side}_peers", f"{who} connected now", namespace=ns, registry=r)
            for side, who in PEER_SIDES.items()
        }
        self.idle_periods = Counter(
            "ingest_idle_periods",
            "Market-data pauses: no message for longer than ingest.idle_after_s",
            namespace=ns,
            registry=r,
        )
        self.resumes = Counter(
            "ingest_resumes", "Market data resumed after a pause", namespace=ns, registry=r
        )
        self.idle = Gauge(
            "ingest_idle", "1 while market data is paused, else 0", namespace=ns, registry=r
        )
        self.longest_gap = Gauge(
            "ingest_longest_gap_seconds",
            "Longest time between two market-data messages so far",
            namespace=ns,
            registry=r,
        )
        # label values at start: a scrape shows every series from the first second
        self._rejected = {k: self.rejected.labels(k) for k in FRAME_REASONS}
        self._conditions = [self.conditions.labels(k) for k in CODE_NAMES]
        self._stage = {k: self.stage.labels(k) for k in STAGES}
        for k in ("ok", "refused"):
            self.reloads.labels(k)
        self._peers = {
            (side, e): c.labels(e)
            for side, c in self.peer_events_total.items()
            for e in ("connected", "disconnected")
        }
        # plain totals for the status heartbeat (prometheus values are not meant to be read back)
        self.totals: PyCounter = PyCounter()
        # keys other threads add to (the reload helper) exist from the start: a key inserted
        # while the loop iterates the totals for a heartbeat would break that iteration. The
        # fault counts too, so a heartbeat shows their zeros.
        for k in (*FAULT_TOTALS, "reloads.ok", "reloads.refused"):
            self.totals[k] = 0

    def reject(self, reason: str, n: int = 1) -> None:
        child = self._rejected.get(reason)
        if child is None:  # a reason the wire decoder added after start-up
            child = self._rejected[reason] = self.rejected.labels(reason)
        child.inc(n)
        self.totals["rejected." + reason] += n

    def add_conditions(self, counts) -> None:
        """Add a kernel report's first row (counts per code, ndarray (N_CODES,) int64)."""
        for code, n in enumerate(counts):
            if n:
                self._conditions[code].inc(int(n))
                self.totals["book." + CODE_NAMES[code]] += int(n)

    def observe(self, stage: str, seconds: float) -> None:
        self._stage[stage].observe(seconds)

    def observe_many(self, stage: str, seconds: np.ndarray) -> None:
        """Observe every value of ``seconds`` (ndarray (n,) float64, not modified).

        Observing a batch of signals one by one costs the loop thread much at high load
        (prometheus_client's ``observe`` walks the buckets in Python); here the buckets are
        counted with numpy and added once each. Falls back to the loop if the client's
        histogram internals differ from the 0.2x layout this relies on.
        """
        h = self._stage[stage]
        bounds = getattr(h, "_upper_bounds", None)
        if len(seconds) < 4 or bounds is None or not hasattr(h, "_buckets"):
            for s in seconds:
                h.observe(float(s))
            return
        # observe() counts a value in the first bucket with value <= bound: searchsorted "left"
        idx = np.searchsorted(np.asarray(bounds), seconds, side="left")
        counts = np.bincount(idx, minlength=len(bounds))
        h._sum.inc(float(np.sum(seconds)))
        for i in np.flatnonzero(counts).tolist():
            h._buckets[i].inc(int(counts[i]))

    def count(self, name: str, n: int = 1) -> None:
        """Add to a plain counter (events, messages, signals, conflated, model_calls)."""
        getattr(self, name).inc(n)
        self.totals[name] += n

    def peer_events(self, side: str, connected: int, disconnected: int, now: int) -> None:
        """Peers of ``side`` (see PEER_SIDES) that came and went since the last monitor poll;
        ``now`` connected."""
        for event, n in (("connected", connected), ("disconnected", disconnected)):
            if n:
                self._peers[side, event].inc(n)
                self.totals[f"{side}.peer_{event}"] += n
        self.peers[side].set(now)

    def feed_paused(self) -> None:
        """No market data for longer than ``ingest.idle_after_s``: one idle period begins."""
        self.idle_periods.inc()
        self.totals["ingest.idle_periods"] += 1
        self.idle.set(1)

    def feed_resumed(self, gap_s: float) -> None:
        """A message after an idle period that lasted ``gap_s`` seconds."""
        self.resumes.inc()
        self.totals["ingest.resumes"] += 1
        self.idle.set(0)
        self.gap(gap_s)

    def gap(self, gap_s: float) -> None:
        """A gap between two messages: kept if it is the longest so far."""
        ms = int(gap_s * 1000)
        if ms > self.totals["ingest.longest_gap_ms"]:
            self.totals["ingest.longest_gap_ms"] = ms
            self.longest_gap.set(gap_s)

    def serve_http(self, address: str) -> int:
        """Expose the registry at ``http://address/metrics`` (a thread of prometheus_client).

        Returns the port bound (``address`` may give port 0 for any free one).
        """
        host, _, port = address.rpartition(":")
        self._http = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        bound = self._http[0].server_port
        logger.info("metrics on http://%s:%s/metrics", host, bound)
        return bound

    def close_http(self) -> None:
        """Stop the metrics endpoint, joining its thread with a timeout."""
        http = getattr(self, "_http", None)
        if http is not None:
            server, thread = http
            server.shutdown()
            server.server_close()
            thread.join(timeout=1.0)
            self._http = None


# Peer events of a socket monitor. A transport connection is a peer: ACCEPTED where the socket
# binds, CONNECTED where it connects (a lost connection is retried by ZeroMQ and CONNECTED
# again), DISCONNECTED in both modes, so the two counts balance.
_PEER_UP = int(zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED)
_PEER_DOWN = int(zmq.EVENT_DISCONNECTED)
_MONITOR_MAX = 10_000  # monitor messages read per poll: a poll is bounded whatever the churn


class PeerMonitor:
    """Counts the peers of one socket from a ZeroMQ socket monitor, off the hot path.

    Create it before the socket binds or connects (so the first peer is seen), poll it from
    the socket's own thread now and then (:meth:`poll`: non-blocking, bounded), close it
    before the socket.

    Not ``Socket.get_monitor_socket()``: the PAIR that reads the events must have RCVHWM 0
    before it connects. libzmq sends monitor events blocking, from its I/O thread; with a
    bounded pipe, events left unread between two polls would stall that thread, and every
    socket of the context with it. Unbounded is safe here: the pipe holds only connect and
    disconnect events, drained at every poll.
    """

    def __init__(self, ctx: zmq.Context, sock: zmq.Socket, side: str) -> None:
        self.side = side
        self.peers = 0  # connected now, as far as the monitor has been read
        self._sock = sock
        addr = f"inproc://lobstream-monitor-{side}-{id(self)}"
        sock.monitor(addr, _PEER_UP | _PEER_DOWN)
        self._mon = ctx.socket(zmq.PAIR)
        self._mon.setsockopt(zmq.RCVHWM, 0)
        self._mon.setsockopt(zmq.LINGER, 0)
        self._mon.connect(addr)

    def poll(self, metrics: Metrics | None = None) -> tuple[int, int]:
        """Read what the monitor reported since the last poll; add it to ``metrics``
        (``<side>.peer_connected`` / ``<side>.peer_disconnected`` and the ``<side>_peers``
        gauge). Returns ``(connected, disconnected)`` of this poll."""
        up = down = 0
        if self._mon is None:
            return 0, 0
        for _ in range(_MONITOR_MAX):
            try:
                frames = self._mon.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(frames[0]) < 6:  # pragma: no cover - not a libzmq v1 monitor event
                continue
            event, _value = struct.unpack("=Hi", frames[0][:6])
            if event & _PEER_UP:
                up += 1
            elif event & _PEER_DOWN:
                down += 1
        self.peers = max(self.peers + up - down, 0)
        if metrics is not None and (up or down):
            metrics.peer_events(self.side, up, down, self.peers)
        return up, down

    def close(self) -> None:
        if self._mon is not None:
            self._sock.disable_monitor()
            self._mon.close(linger=0)
            self._mon = None


class RateLimitedLog:
    """Log lines per kind at most ``max_per_s`` a second; the rest are counted and summarised.

    The summary of suppressed lines is logged once a second at most, by :meth:`flush`.
    """

    def __init__(self, log: logging.Logger, max_per_s: float) -> None:
        self.log = log
        self.max_per_s = max_per_s
        self._window = 0.0
        self._sent: PyCounter = PyCounter()
        self._suppressed: PyCounter = PyCounter()

    def warning(self, kind: str, msg: str, *args) -> None:
        now = time.monotonic()
        if now - self._window >= 1.0:
            self.flush(now)
        if self._sent[kind] < self.max_per_s:
            self._sent[kind] += 1
            self.log.warning(msg, *args)
        else:
            self._suppressed[kind] += 1

    def flush(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._suppressed:
            self.log.warning(
                "suppressed %s similar log lines in the last second: %s",
                sum(self._suppressed.values()),
                dict(self._suppressed),
            )
        self._suppressed.clear()
        self._sent.clear()
        self._window = now
