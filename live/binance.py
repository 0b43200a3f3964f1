"""The live Binance connector: public depth diffs and trades over a websocket, the REST depth
snapshot, synced by the Binance reader's update-id state machine, published as canonical
events on ``md.<symbol>``, optionally recorded.

One asyncio loop runs four tasks, and owns the ZeroMQ socket:

- the connection: one combined-stream websocket for every symbol (``<sym>@depth@100ms`` and
  ``<sym>@trade`` by default). Each message is stamped on receipt (``time.monotonic_ns()`` for
  ``ts_recv``, wall time for the recording) and queued. A connection that closes, fails or is
  silent for ``stall_s`` is replaced after a jittered exponential backoff (reset once a
  connection delivered messages); one older than ``max_connection_s`` is replaced at once
  (``rollover``: Binance cuts every connection at 24 h). A new connection needs no resync of
  its own: its first diff either continues each update-id chain, or breaks it (and resyncs);
- the processor: takes what has queued (so a quiet market is handled one message at a time and
  a busy one in chunks of up to ``max_chunk``), runs it through :class:`lobstream.live.sync.
  BinanceSync`, stamps ``ts_recv`` (the receipt time of the chunk's first message), publishes,
  records, and asks for the snapshots the state machine waits for;
- the snapshots: REST ``depth?limit=1000``, at most one request every ``snapshot_interval_s``
  (Binance weighs them heavily), failures retried with backoff (``Retry-After`` honoured); a
  snapshot goes through the same queue as the messages, so the state machine sees both in
  arrival order;
- the heartbeat: every ``heartbeat_s``, the counters (:mod:`lobstream.live.metrics`) as JSON on
  topic ``feed.status`` of the same socket, and a fresh snapshot for every symbol when a new
  subscriber joined (it has no book otherwise).

Needs the ``live`` extra: ``websockets`` and ``aiohttp``, imported when a feed runs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from lobstream.kernels.registry import Registry
from lobstream.live.metrics import FeedMetrics
from lobstream.live.publisher import DEFAULT_HWM, Publisher
from lobstream.live.record import DEFAULT_ROTATE_BYTES, Recorder
from lobstream.live.sync import MARKETS, BinanceSync, Output

logger = logging.getLogger(__name__)

EXTRA_HINT = "the live feed needs the live extra: pip install 'lobstream[live]'"


@dataclass(frozen=True)
class Venue:
    """Where one Binance market lives."""

    ws: str
    rest: str
    depth_path: str
    info_path: str


VENUES = {
    "spot": Venue(
        "wss://stream.binance.com:9443", "https://api.binance.com",
        "/api/v3/depth", "/api/v3/exchangeInfo",
    ),
    "usdm": Venue(
        "wss://fstream.binance.com", "https://fapi.binance.com",
        "/fapi/v1/depth", "/fapi/v1/exchangeInfo",
    ),
    "coinm": Venue(
        "wss://dstream.binance.com", "https://dapi.binance.com",
        "/dapi/v1/depth", "/dapi/v1/exchangeInfo",
    ),
}  # fmt: skip


class FeedError(RuntimeError):
    """The feed cannot go on (no tick size, too many failed connections in a row)."""


@dataclass(frozen=True)
class FeedConfig:
    """Everything a Binance feed is run with (``lobstream feed binance`` sets it from options).

    ``ws_url`` / ``rest_url`` replace the venue's base URLs (a test exchange on loopback).
    ``max_failures``: connection attempts in a row without a message before giving up (0:
    never). ``run_s``: stop after this long (0: until stopped). ``subscribers`` / ``wait_s``:
    before connecting, wait up to ``wait_s`` for that many subscribers (ZeroMQ drops what is
    sent before a subscription arrives).
    """

    market: str
    symbols: tuple[str, ...]
    endpoint: str
    bind: bool = True
    record: str | None = None
    rotate_bytes: int = DEFAULT_ROTATE_BYTES
    ws_url: str | None = None
    rest_url: str | None = None
    depth_stream: str = "depth@100ms"
    trades: bool = True
    snapshot_limit: int = 1000
    snapshot_interval_s: float = 1.0
    snapshot_timeout_s: float = 10.0
    stall_s: float = 10.0
    backoff_min_s: float = 0.25
    backoff_max_s: float = 30.0
    max_connection_s: float = 23.5 * 3600
    max_failures: int = 0
    heartbeat_s: float = 1.0
    metrics_address: str = ""
    max_chunk: int = 256
    hwm: int = DEFAULT_HWM
    lossless: bool = False
    subscribers: int = 0
    wait_s: float = 0.0
    resync_on_subscribe: bool = True
    run_s: float = 0.0

    def __post_init__(self) -> None:
        if self.market not in MARKETS:
            raise ValueError(f"market must be one of {', '.join(MARKETS)}, got {self.market!r}")
        if not self.symbols:
            raise ValueError("give at least one symbol, e.g. BTCUSDT")
        if self.max_chunk < 1:
            raise ValueError(f"max_chunk must be >= 1, got {self.max_chunk}")
        for name in ("stall_s", "heartbeat_s", "backoff_min_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def venue(self) -> Venue:
        v = VENUES[self.market]
        return Venue(
            (self.ws_url or v.ws).rstrip("/"),
            (self.rest_url or v.rest).rstrip("/"),
            v.depth_path,
            v.info_path,
        )

    def stream_url(self) -> str:
        streams = []
        for s in self.symbols:
            streams.append(f"{s.lower()}@{self.depth_stream}")
            if self.trades:
                streams.append(f"{s.lower()}@trade")
        return f"{self.venue.ws}/stream?streams={'/'.join(streams)}"


def backoff_delay(attempt: int, lo: float, hi: float, rng: random.Random) -> float:
    """Seconds before reconnect attempt ``attempt`` (0-based): exponential, capped at ``hi``,
    jittered over its upper half (many clients cut at once do not return at once)."""
    cap = min(hi, lo * 2.0**attempt)
    return cap / 2 + rng.uniform(0, cap / 2)


class BinanceFeed:
    """One Binance market's symbols, live; :meth:`run` blocks until stopped.

    Parameters
    ----------
    cfg : FeedConfig
    registry : Registry, optional
        Instruments known up front (their tick sizes win over exchangeInfo; a symbol is
        published under its registry name, the plain one or ``binance:SYM`` and the like).
    """

    def __init__(self, cfg: FeedConfig, registry: Registry | None = None) -> None:
        self.cfg = cfg
        self.symbols = [s.upper() for s in cfg.symbols]
        self.registry = registry if registry is not None else Registry()
        self.metrics = FeedMetrics(self.symbols)
        self.sync: BinanceSync | None = None
        self.publisher: Publisher | None = None
        self.recorder: Recorder | None = None
        self.metrics_port: int | None = None
        self.started = threading.Event()  # the socket is open (``endpoint`` is bound)
        self.endpoint = cfg.endpoint
        self._rng = random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._inbox: deque = deque()
        self._wake: asyncio.Event | None = None
        self._snap_wake: asyncio.Event | None = None
        self._want: list[str] = []
        self._inflight: set[str] = set()
        self._resyncing: set[str] = set()  # symbols whose chain broke (or forced)
        self._unconfirmed: set[str] = set()  # ... with a snapshot applied, no diff after it yet
        self._was_live: set[str] = set()  # symbols synced once (a diff applied after a snapshot)
        self._last_msg = 0.0
        self._close_reason: str | None = None
        self._joins_seen = 0
        self.received = 0  # websocket messages received
        self.first_recv_ns: int | None = None  # time.monotonic_ns() of the first one
        self.error: BaseException | None = None

    # -- running -----------------------------------------------------------------------------
    def run(self, handle_signals: bool = False) -> dict:
        """Run until :meth:`request_stop`, ``run_s``, or (``handle_signals``) SIGINT/SIGTERM;
        returns the last heartbeat. Raises FeedError when the feed cannot go on."""
        return asyncio.run(self.main(handle_signals))

    def request_stop(self) -> None:
        """Ask the feed to stop (from any thread)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop closed meanwhile
                pass

    async def main(self, handle_signals: bool = False) -> dict:
        try:
            import aiohttp
            import websockets  # noqa: F401
        except ImportError as exc:
            raise FeedError(f"{EXTRA_HINT} ({exc})") from None
        cfg = self.cfg
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._snap_wake = asyncio.Event()
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self._stop.set)
        try:
            self.publisher = Publisher(
                cfg.endpoint, registry=self.registry, bind=cfg.bind, hwm=cfg.hwm,
                lossless=cfg.lossless,
            )  # fmt: skip
            self.endpoint = self.publisher.endpoint
            if cfg.metrics_address:
                self.metrics_port = self.metrics.serve_http(cfg.metrics_address)
            self.started.set()
            timeout = aiohttp.ClientTimeout(total=cfg.snapshot_timeout_s)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                ticks = await self._ticks(http)
                self.sync = BinanceSync(cfg.market, self.symbols, self.registry, ticks)
                if cfg.record:
                    self.recorder = Recorder(Path(cfg.record), rotate_bytes=cfg.rotate_bytes)
                await self._wait_subscribers()
                self._joins_seen = self.publisher.joins
                tasks = [
                    asyncio.create_task(self._connection(), name="connection"),
                    asyncio.create_task(self._processor(), name="processor"),
                    asyncio.create_task(self._snapshots(http), name="snapshots"),
                    asyncio.create_task(self._heartbeat(), name="heartbeat"),
                ]
                stopper = asyncio.create_task(self._stop.wait())
                if cfg.run_s > 0:
                    self._loop.call_later(cfg.run_s, self._stop.set)
                done, _ = await asyncio.wait([stopper, *tasks], return_when="FIRST_COMPLETED")
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                stopper.cancel()
                for t in done:
                    if t is not stopper and not t.cancelled() and t.exception() is not None:
                        raise t.exception()
                self._drain()  # what was received before the stop is still published
            return self._beat()
        finally:
            if handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self._loop.remove_signal_handler(sig)
            if self.recorder is not None:
                self.recorder.close()
            if self.publisher is not None:
                self.publisher.close()
            self.metrics.close_http()

    # -- instruments ---------------------------------------------------------------------------
    async def _ticks(self, http) -> dict[str, Decimal]:
        """Tick sizes from exchangeInfo for the symbols the registry does not hold."""
        from lobstream.live.sync import instrument_key

        missing = [
            s
            for s in self.symbols
            if s not in self.registry and instrument_key(self.cfg.market, s) not in self.registry
        ]
        if not missing:
            return {}
        v = self.cfg.venue
        params = {"symbols": "[" + ",".join(f'"{s}"' for s in missing) + "]"}
        if self.cfg.market != "spot":
            params = {}  # the futures exchangeInfo lists every symbol and takes no filter
        last: Exception | None = None
        for attempt in range(5):
            try:
                async with http.get(v.rest + v.info_path, params=params) as resp:
                    resp.raise_for_status()
                    info = await resp.json(content_type=None)
                break
            except Exception as exc:  # network, HTTP status, JSON: retried, then reported
                last = exc
                await asyncio.sleep(backoff_delay(attempt, self.cfg.backoff_min_s, 5.0, self._rng))
        else:
            raise FeedError(
                f"cannot read tick sizes from {v.rest}{v.info_path} ({last}); give them in a "
                "registry file (--registry)"
            )
        ticks = {}
        for entry in info.get("symbols", []):
            for flt in entry.get("filters", []):
                if flt.get("filterType") == "PRICE_FILTER":
                    ticks[entry.get("symbol")] = Decimal(flt["tickSize"]).normalize()
        lost = [s for s in missing if s not in ticks]
        if lost:
            raise FeedError(
                f"{', '.join(lost)} not listed by {v.rest}{v.info_path} on {self.cfg.market}; "
                "check the symbol and the market (spot, usdm, coinm)"
            )
        return {s: ticks[s] for s in missing}

    async def _wait_subscribers(self) -> None:
        cfg = self.cfg
        if cfg.wait_s <= 0:
            return
        deadline = time.monotonic() + cfg.wait_s
        while time.monotonic() < deadline and not self._stop.is_set():
            n = self.publisher.poll_subscriptions()
            if cfg.subscribers and n >= cfg.subscribers:
                return
            await asyncio.sleep(0.01)

    # -- the connection -----------------------------------------------------------------------
    async def _connection(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

        cfg = self.cfg
        url = cfg.stream_url()
        loopback = "://127.0.0.1" in url or "://localhost" in url
        attempt = failures = 0
        inbox, wake = self._inbox, self._wake
        mono, wall = time.monotonic_ns, time.time_ns
        while not self._stop.is_set():
            got = False
            self._close_reason = None
            reason = "error"
            try:
                async with connect(
                    url, max_size=None, max_queue=1024, close_timeout=2.0,
                    proxy=None if loopback else True, compression=None,
                ) as ws:  # fmt: skip
                    self.metrics.set_connected(True)
                    logger.info("connected to %s", url)
                    self._last_msg = time.monotonic()
                    watchdog = asyncio.create_task(self._watch(ws, time.monotonic()))
                    try:
                        while True:
                            raw = await ws.recv(decode=False)
                            inbox.append((mono(), wall(), raw))
                            if self.first_recv_ns is None:  # what a run's rate starts from
                                self.first_recv_ns = inbox[-1][0]
                            wake.set()
                            got = True
                            self.received += 1
                            self._last_msg = time.monotonic()
                    finally:
                        watchdog.cancel()
            except ConnectionClosed as exc:
                reason = self._close_reason or "closed"
                logger.info("connection closed (%s): %s", reason, exc)
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                logger.warning("cannot connect to %s: %s", url, exc)
            self.metrics.set_connected(False)
            if self._stop.is_set():
                return
            self.metrics.reconnect(reason)
            if got:
                attempt = failures = 0
            else:
                failures += 1
                if cfg.max_failures and failures >= cfg.max_failures:
                    raise FeedError(f"{failures} connection attempts to {url} in a row failed")
            delay = 0.0 if reason == "rollover" else backoff_delay(
                attempt, cfg.backoff_min_s, cfg.backoff_max_s, self._rng
            )  # fmt: skip
            attempt += 1
            if delay:
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                    return
                except TimeoutError:
                    pass

    async def _watch(self, ws, opened: float) -> None:
        """Close a silent connection (``stall``) and an old one (``rollover``)."""
        cfg = self.cfg
        tick = min(cfg.stall_s / 4, cfg.max_connection_s / 4, 1.0)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - self._last_msg > cfg.stall_s:
                self._close_reason = "stall"
                logger.warning("no message for %.1f s: reconnecting", now - self._last_msg)
            elif now - opened > cfg.max_connection_s:
                self._close_reason = "rollover"
                logger.info("connection open %.0f s: replacing it", now - opened)
            else:
                continue
            await ws.close(1000, self._close_reason)
            return

    # -- processing ----------------------------------------------------------------------------
    async def _processor(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._drain()

    def _drain(self) -> None:
        """Everything queued, in arrival order: websocket messages in chunks, snapshots alone."""
        inbox, sync, max_chunk = self._inbox, self.sync, self.cfg.max_chunk
        while inbox:
            first = inbox.popleft()
            if len(first) == 4:  # (mono, wall, body, symbol): a REST snapshot
                self._snapshot_in(first)
                continue
            chunk = [(first[1], first[2])]
            while inbox and len(chunk) < max_chunk and len(inbox[0]) == 3:
                item = inbox.popleft()
                chunk.append((item[1], item[2]))
            self._out(sync.feed(chunk), first[0])

    def _snapshot_in(self, item: tuple) -> None:
        mono, wall, body, sym = item
        self._inflight.discard(sym)
        out = self.sync.snapshot(sym, wall, body)
        if self.sync.state(sym) == "live" and sym in self._resyncing:
            self._unconfirmed.add(sym)  # a resync once a diff continues it
        self._out(out, mono)
        if self.sync.state(sym) != "live" and not out.stale and not out.gaps:
            self.metrics.snapshot_error()  # not a snapshot (malformed body): ask again
            self._want_snapshot(sym)

    def _out(self, out: Output, mono: int) -> None:
        sync, m = self.sync, self.metrics
        ev = out.events
        if len(ev):
            ev["ts_recv"] = mono
            n = self.publisher.send(ev)
            m.published(n, len(ev))
            m.latency.observe((time.monotonic_ns() - mono) / 1e9)
        if self.recorder is not None and out.lines:
            self.recorder.write_many(out.lines)
        for s, n in sync.messages.items():
            d = n - m.counts["messages"][s]
            if d:
                m.count("messages", s, d)
        for s in out.gaps:
            m.count("gaps", s)
            self._resyncing.add(s)
            logger.warning("%s: update-id chain broken; resyncing from a fresh snapshot", s)
        for s in out.stale:
            m.count("stale_snapshots", s)
            if s in self._was_live:  # else still the first sync, not a resync
                self._resyncing.add(s)
            logger.warning("%s: snapshot older than the diffs held for it; fetching another", s)
        for s in out.want_snapshot:
            self._want_snapshot(s)
        for s in list(self._unconfirmed):
            ch = sync.chains[s]
            if s in out.stale or s in out.gaps or not ch.synced:
                self._unconfirmed.discard(s)  # that snapshot did not hold
            elif not ch.fresh:
                self._unconfirmed.discard(s)
                self._resyncing.discard(s)
                m.count("resyncs", s)
                logger.info("%s resynced", s)
        for s, ch in sync.chains.items():
            if s not in self._was_live and ch.synced and not ch.fresh:
                self._was_live.add(s)

    # -- snapshots -------------------------------------------------------------------------------
    def _want_snapshot(self, sym: str) -> None:
        if sym not in self._inflight and sym not in self._want:
            self._want.append(sym)
            self._snap_wake.set()

    async def _snapshots(self, http) -> None:
        import aiohttp

        cfg, v = self.cfg, self.cfg.venue
        url = v.rest + v.depth_path
        next_at = 0.0
        attempt = 0
        while True:
            await self._snap_wake.wait()
            self._snap_wake.clear()
            while self._want:
                wait = next_at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                sym = self._want.pop(0)
                self._inflight.add(sym)
                next_at = time.monotonic() + cfg.snapshot_interval_s
                self.metrics.count("snapshot_requests", sym)
                params = {"symbol": sym, "limit": str(cfg.snapshot_limit)}
                try:
                    async with http.get(url, params=params) as resp:
                        if resp.status in (418, 429):
                            retry = float(resp.headers.get("Retry-After", "1") or 1)
                            next_at = time.monotonic() + max(retry, cfg.snapshot_interval_s)
                            raise aiohttp.ClientResponseError(
                                resp.request_info, (), status=resp.status, message="rate limit"
                            )
                        resp.raise_for_status()
                        body = await resp.read()
                    attempt = 0
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self._inflight.discard(sym)
                    self.metrics.snapshot_error()
                    delay = backoff_delay(attempt, cfg.backoff_min_s, cfg.backoff_max_s, self._rng)
                    attempt += 1
                    logger.warning("snapshot of %s failed (%s); again in %.1f s", sym, exc, delay)
                    next_at = max(next_at, time.monotonic() + delay)
                    self._want_snapshot(sym)
                    continue
                self._inbox.append((time.monotonic_ns(), time.time_ns(), body, sym))
                self._wake.set()

    # -- heartbeat ---------------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.heartbeat_s)
            self.publisher.status(self._beat())
            if self.cfg.resync_on_subscribe:
                self.publisher.poll_subscriptions()
                if self.publisher.joins > self._joins_seen:
                    self._joins_seen = self.publisher.joins
                    for s in self.symbols:
                        if self.sync.force_resync(s):
                            self._resyncing.add(s)
                    logger.info("a subscriber joined: fresh snapshots for it")

    def _beat(self) -> dict:
        m, sync = self.metrics, self.sync
        if sync is None:
            return m.heartbeat({})
        m.set_malformed(dict(sync.defects))
        for s in self.symbols:
            m.set_held(s, sync.held(s))
            off = sync.clock_offset_ns.get(s)
            if off is not None:
                m.set_offset(s, off)
        extra = {"market": self.cfg.market, "endpoint": self.endpoint}
        if self.recorder is not None:
            extra["recording"] = {
                "lines": self.recorder.lines,
                "bytes": self.recorder.bytes,
                "files": [str(p) for p in self.recorder.paths],
            }
        return m.heartbeat({s: sync.state(s) for s in self.symbols}, extra)
