"""The live feed's counters: one place that keeps them, for the heartbeat and for Prometheus.

Every counter exists from the start for every symbol and every known reason (a scrape shows
zeros, not missing series); a malformed-message reason first seen later is added then. The
heartbeat (:meth:`FeedMetrics.heartbeat`) is the same numbers as one JSON object.

Counted: websocket messages (by symbol), events published, chain breaks (``gaps``), resyncs
(snapshots applied after a break), stale snapshots (older than the diffs held for them),
snapshot requests and their failures, reconnects (by reason: ``closed``, ``stall``, ``error``,
``rollover`` -- the planned reconnect before the exchange's 24 h cut), malformed messages (by
reason: the Binance reader's defect kinds, plus ``unknown_stream``), and per symbol the
exchange-to-local clock offset (receipt wall time minus the message's event time ``E``, so
network delay included).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger(__name__)

RECONNECT_REASONS = ("closed", "stall", "error", "rollover")
MALFORMED_REASONS = (
    "bad_json",
    "bad_record",
    "bad_price",
    "bad_quantity",
    "bad_side",
    "non_positive_price",
    "negative_quantity",
    "off_tick_price",
    "unknown_stream",
)
SYMBOL_COUNTS = ("messages", "gaps", "resyncs", "stale_snapshots", "snapshot_requests")
# 10 us .. 1 s: receipt to publish is tens to hundreds of microseconds
LATENCY_BUCKETS = tuple(m * 10.0**e for e in range(-5, 0) for m in (1.0, 2.0, 5.0)) + (1.0,)


class FeedMetrics:
    """Counters of one feed process.

    Parameters
    ----------
    symbols : sequence of str
        The exchange symbols the feed subscribes to.
    namespace : str
        Prefix of every Prometheus metric name.
    """

    def __init__(self, symbols: Sequence[str], namespace: str = "lobstream_feed") -> None:
        self.symbols = list(symbols)
        self.registry = CollectorRegistry(auto_describe=True)
        r, ns = self.registry, namespace
        self.started = time.monotonic()
        self._c = {
            name: Counter(name, f"Per symbol: {name.replace('_', ' ')}", ["symbol"],
                          namespace=ns, registry=r)
            for name in SYMBOL_COUNTS
        }  # fmt: skip
        self._events = Counter("events", "Events published", namespace=ns, registry=r)
        self._published = Counter(
            "published_messages", "Market-data messages published", namespace=ns, registry=r
        )
        self._snapshot_errors = Counter(
            "snapshot_errors", "Snapshot requests that failed", namespace=ns, registry=r
        )
        self._reconnects = Counter(
            "reconnects", "Websocket reconnects, by reason", ["reason"], namespace=ns, registry=r
        )
        self._malformed = Counter(
            "malformed", "Messages skipped as malformed, by reason", ["reason"],
            namespace=ns, registry=r,
        )  # fmt: skip
        self._offset = Gauge(
            "clock_offset_seconds",
            "Receipt wall time minus exchange event time of the last message",
            ["symbol"],
            namespace=ns,
            registry=r,
        )
        self._held = Gauge(
            "held_diffs", "Diffs waiting for a snapshot", ["symbol"], namespace=ns, registry=r
        )
        self._connected = Gauge(
            "connected", "1 while the websocket is open", namespace=ns, registry=r
        )
        self.latency = Histogram(
            "receipt_to_publish_seconds",
            "From websocket receipt of a chunk's first message to its events sent",
            namespace=ns,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.counts: dict[str, dict[str, int]] = {
            name: {s: 0 for s in self.symbols} for name in SYMBOL_COUNTS
        }
        self.totals = {"events": 0, "published_messages": 0, "snapshot_errors": 0}
        self.reconnects = {k: 0 for k in RECONNECT_REASONS}
        self.malformed: dict[str, int] = {k: 0 for k in MALFORMED_REASONS}
        self.offset_ms: dict[str, float | None] = {s: None for s in self.symbols}
        self.connected = False
        for name in SYMBOL_COUNTS:
            for s in self.symbols:
                self._c[name].labels(s)
        for k in RECONNECT_REASONS:
            self._reconnects.labels(k)
        for k in MALFORMED_REASONS:
            self._malformed.labels(k)
        for s in self.symbols:
            self._offset.labels(s)
            self._held.labels(s)
        self._http = None

    # -- counting ----------------------------------------------------------------------------
    def count(self, name: str, symbol: str, n: int = 1) -> None:
        self.counts[name][symbol] += n
        self._c[name].labels(symbol).inc(n)

    def published(self, messages: int, events: int) -> None:
        self.totals["published_messages"] += messages
        self.totals["events"] += events
        self._published.inc(messages)
        self._events.inc(events)

    def snapshot_error(self) -> None:
        self.totals["snapshot_errors"] += 1
        self._snapshot_errors.inc()

    def reconnect(self, reason: str) -> None:
        self.reconnects[reason] += 1
        self._reconnects.labels(reason).inc()

    def set_malformed(self, defects: dict[str, int]) -> None:
        """Bring the malformed counts up to ``defects`` (the sync layer's running totals)."""
        for k, n in defects.items():
            d = n - self.malformed.get(k, 0)
            if d > 0:
                self.malformed[k] = n
                self._malformed.labels(k).inc(d)

    def set_offset(self, symbol: str, offset_ns: int) -> None:
        self.offset_ms[symbol] = offset_ns / 1e6
        self._offset.labels(symbol).set(offset_ns / 1e9)

    def set_held(self, symbol: str, n: int) -> None:
        self._held.labels(symbol).set(n)

    def set_connected(self, up: bool) -> None:
        self.connected = up
        self._connected.set(1 if up else 0)

    # -- reporting ---------------------------------------------------------------------------
    def heartbeat(self, states: dict[str, str], extra: dict | None = None) -> dict:
        """The counters as one JSON-ready object (``states``: symbol -> sync state)."""
        return {
            "ts": time.time(),
            "uptime_s": round(time.monotonic() - self.started, 3),
            "connected": self.connected,
            "counts": {
                **self.totals,
                **{name: sum(v.values()) for name, v in self.counts.items()},
                "reconnects": dict(self.reconnects),
                "malformed": {k: v for k, v in self.malformed.items() if v},
            },
            "instruments": {
                s: {
                    "state": states.get(s, "syncing"),
                    **{name: self.counts[name][s] for name in SYMBOL_COUNTS},
                    "clock_offset_ms": self.offset_ms[s],
                }
                for s in self.symbols
            },
            **(extra or {}),
        }

    def serve_http(self, address: str) -> int:
        """Expose the registry at ``http://address/metrics``; returns the port bound."""
        host, _, port = address.rpartition(":")
        self._http = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        bound = self._http[0].server_port
        logger.info("feed metrics on http://%s:%s/metrics", host, bound)
        return bound

    def close_http(self) -> None:
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join(timeout=1.0)
            self._http = None
