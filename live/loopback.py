"""A Binance-like exchange on loopback that replays a recording, with faults, for the live
connector's tests and benchmark.

It serves, on 127.0.0.1, what the connector talks to:

- a combined-stream websocket (``/stream?streams=...``) sending the recording's ``depthUpdate``
  and trade messages, as they were recorded, at the recorded pace times ``speed`` (0: as fast as
  the client takes them), continuing where it stopped when the client reconnects;
- the REST depth snapshot (``/api/v3/depth``, ``/fapi/v1/depth``, ``/dapi/v1/depth``): the
  exchange's book after the last diff streamed, built by :class:`ReferenceBook` from the
  recording's own snapshot and diffs, in the recording's body layout; before the recording's
  snapshot has been streamed past, that snapshot itself (newer than anything sent: valid);
- ``exchangeInfo`` (the tick size).

Faults (:class:`Fault`), placed at the n-th depth diff streamed (0-based): ``drop`` (not sent:
a gap), ``corrupt`` (sent as malformed JSON instead: a gap too), ``garbage`` (a malformed
message sent before it, nothing lost), ``close`` (the server closes the connection before it),
``stall`` (the stream goes silent before it for ``seconds``; the client's watchdog reconnects),
and ``stale`` (the ``at``-th snapshot request, 0-based, answers with the book as it was
before streamed diff ``book_at``, older than what the client holds). ``close`` and ``stall`` skip ``lose`` messages while the
client is away (the real stream goes on).

Needs the ``live`` extra (websockets, aiohttp). ``python -m lobstream.live.loopback`` runs one
as a process (the benchmark does) and prints its two base URLs on one line.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEPTH_PATHS = {"spot": "/api/v3/depth", "usdm": "/fapi/v1/depth", "coinm": "/dapi/v1/depth"}
INFO_PATHS = {
    "spot": "/api/v3/exchangeInfo",
    "usdm": "/fapi/v1/exchangeInfo",
    "coinm": "/dapi/v1/exchangeInfo",
}
FAULT_KINDS = ("drop", "corrupt", "garbage", "close", "stall", "stale")
GARBAGE = b'{"stream":"%s@depth","data":{"e":"depthUpdate","E":'  # cut short: not JSON


@dataclass(frozen=True)
class Fault:
    """One injected fault (see the module docstring)."""

    kind: str
    at: int
    seconds: float = 0.0
    lose: int = 0
    book_at: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(
                f"fault kind must be one of {', '.join(FAULT_KINDS)}, got {self.kind!r}"
            )


class ReferenceBook:
    """The exchange's book: the recording's snapshot plus its diffs under Binance's rules,
    written out plainly (a dict per side keyed by the price string, as the venue sends it)."""

    def __init__(self, futures: bool) -> None:
        self.futures = futures
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}
        self.synced = False
        self.fresh = False
        self.last_u = 0
        self.template: dict = {}
        self.times: tuple[int, int] = (0, 0)  # E, T of the newest applied diff
        self.pending: list[dict] = []

    def snapshot(self, obj: dict) -> None:
        self.bids = {p: q for p, q in obj["bids"]}
        self.asks = {p: q for p, q in obj["asks"]}
        self.template = {k: v for k, v in obj.items() if k not in ("bids", "asks")}
        self.synced, self.fresh, self.last_u = True, True, int(obj["lastUpdateId"])
        pending, self.pending = self.pending, []
        for d in pending:
            self.diff(d)

    def diff(self, d: dict) -> None:
        if not self.synced:
            self.pending.append(d)
            return
        u, L = d["u"], self.last_u
        if (u < L) if (self.fresh and self.futures) else (u <= L):
            return
        self.fresh, self.last_u = False, u
        for side, book in (("b", self.bids), ("a", self.asks)):
            for p, q in d[side]:
                if float(q) == 0:
                    book.pop(p, None)
                else:
                    book[p] = q
        self.times = (d.get("E", 0), d.get("T", d.get("E", 0)))

    def body(self, limit: int = 1000) -> bytes:
        """The REST snapshot now, in the recording's layout (``lastUpdateId`` first)."""
        out = dict(self.template)
        out["lastUpdateId"] = self.last_u
        if "E" in out:
            out["E"], out["T"] = self.times
        out["bids"] = [[p, self.bids[p]] for p in sorted(self.bids, key=float, reverse=True)]
        out["asks"] = [[p, self.asks[p]] for p in sorted(self.asks, key=float)]
        out["bids"], out["asks"] = out["bids"][:limit], out["asks"][:limit]
        return json.dumps(out, separators=(",", ":")).encode()

    def copy(self) -> ReferenceBook:
        c = ReferenceBook(self.futures)
        c.__dict__.update(
            {**self.__dict__, "bids": dict(self.bids), "asks": dict(self.asks), "pending": []}
        )
        return c


def load_recording(paths: Sequence[Path]) -> list[tuple[int, bytes, dict | None]]:
    """``(local ns, raw JSON, parsed data of a depth diff or snapshot | None)`` of every line
    but the BBO stream, in file order."""
    out = []
    for p in paths:
        with gzip.open(p, "rb") as fh:
            for line in fh:
                ts, raw = line.rstrip(b"\n").split(b" ", 1)
                if b"@bookTicker" in raw[:64]:
                    continue
                obj = (
                    json.loads(raw)
                    if (b"depthUpdate" in raw[:96] or b"lastUpdateId" in raw[:32])
                    else None
                )
                data = obj.get("data", obj) if obj is not None else None
                out.append((int(ts), raw, data))
    return out


class LoopbackExchange:
    """Replays ``paths`` (one instrument, files in order) on a websocket and a REST server.

    Parameters
    ----------
    paths : sequence of Path
        Recordings of one symbol (``<local_ns> <json>`` lines), continuation files after it.
    market : str
        ``spot``, ``usdm`` or ``coinm`` (REST paths, futures sync rules).
    symbol : str
        The exchange symbol (``BTCUSDT``).
    tick_size : str
        What exchangeInfo reports.
    speed : float
        Recorded pace times this; 0 as fast as possible.
    start : int
        Depth diffs of the recording (after its snapshot) applied to the book but not
        streamed: the client joins a market already running.
    faults : sequence of Fault
    max_messages : int, optional
        Stream at most this many messages.
    wait_snapshots : bool
        When the client needs a snapshot (at the start, after a fault that loses diffs, after a
        stale snapshot), stream one more diff, then wait until it fetched a good one: what
        each snapshot holds is then the same however fast the client is (tests).
    """

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        market: str,
        symbol: str,
        tick_size: str,
        speed: float = 0.0,
        start: int = 0,
        faults: Sequence[Fault] = (),
        max_messages: int | None = None,
        wait_snapshots: bool = False,
    ) -> None:
        self.market = market
        self.symbol = symbol.upper()
        self.tick_size = tick_size
        self.speed = speed
        self.faults = {(f.kind, f.at): f for f in faults}
        self.book = ReferenceBook(futures=market != "spot")
        # the book before these streamed diffs, kept for stale snapshots
        self._copies: dict[int, ReferenceBook | None] = {
            f.book_at: None for f in faults if f.kind == "stale"
        }
        lines = load_recording([Path(p) for p in paths])
        self.first_snapshot = next(
            (raw for _, raw, d in lines if d is not None and "lastUpdateId" in d), None
        )
        # pre-roll: the recording up to its snapshot and ``start`` diffs after it
        pos, diffs_after = 0, -1
        while pos < len(lines) and diffs_after < start:
            _, _, d = lines[pos]
            if d is not None:
                self._apply(d)
                if "lastUpdateId" in d:
                    diffs_after = 0
                elif diffs_after >= 0:
                    diffs_after += 1
            pos += 1
        self.messages = [x for x in lines[pos:] if x[2] is None or "lastUpdateId" not in x[2]]
        if max_messages is not None:
            self.messages = self.messages[:max_messages]
        self._behind: list[dict] = []  # streamed diffs not yet applied to the book
        self.pos = 0  # next message to stream
        self.depth_n = 0  # depth diffs streamed (or dropped) so far
        self.sent = 0  # recording messages streamed (or dropped on purpose)
        self.delivered = 0  # websocket messages sent, injected ones included
        self.connections = 0
        self.snapshot_requests = 0
        self.done = threading.Event()
        self.ready = threading.Event()
        self.ws_url = self.rest_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._used: set[tuple[str, int]] = set()
        self._wait_snapshots = wait_snapshots
        self._need_snapshot = True
        self._told = False  # a diff was sent since the client started needing a snapshot
        self._served: asyncio.Event | None = None
        self._current = None

    # -- the book --------------------------------------------------------------------------
    def _apply(self, d: dict) -> None:
        if "lastUpdateId" in d:
            self.book.snapshot(d)
        else:
            self.book.diff(d)

    def _stream_diff(self, d: dict) -> None:
        """The book moves on by a streamed (or lost) diff: applied when a snapshot needs the
        book (:meth:`_catch_up`), not while streaming, so sending stays cheap."""
        if self.depth_n in self._copies:
            self._catch_up()
            self._copies[self.depth_n] = self.book.copy()
        self._behind.append(d)
        self.depth_n += 1

    def _catch_up(self) -> None:
        behind, self._behind = self._behind, []
        for d in behind:
            self._apply(d)

    # -- servers ---------------------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> LoopbackExchange:
        """Serve on a thread of its own; returns once both servers listen."""
        self._thread = threading.Thread(target=self._run, name="loopback-exchange", daemon=True)
        self._thread.start()
        if not self.ready.wait(timeout_s):
            raise RuntimeError("loopback exchange did not start")
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> LoopbackExchange:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.run(self.serve())

    async def serve(self, on_ready=None) -> None:
        from aiohttp import web
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._served = asyncio.Event()
        app = web.Application()
        app.router.add_get(DEPTH_PATHS[self.market], self._depth)
        app.router.add_get(INFO_PATHS[self.market], self._info)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        rest_port = runner.addresses[0][1]
        async with serve(self._stream, "127.0.0.1", 0, compression=None, max_size=None) as ws:
            ws_port = ws.sockets[0].getsockname()[1]
            self.ws_url = f"ws://127.0.0.1:{ws_port}"
            self.rest_url = f"http://127.0.0.1:{rest_port}"
            self.ready.set()
            if on_ready is not None:
                on_ready(self)
            await self._stop.wait()
            ws.close()
        await runner.cleanup()

    async def _info(self, request):
        from aiohttp import web

        body = {
            "symbols": [
                {
                    "symbol": self.symbol,
                    "filters": [{"filterType": "PRICE_FILTER", "tickSize": self.tick_size}],
                }
            ]
        }
        return web.json_response(body)

    async def _depth(self, request):
        from aiohttp import web

        if request.query.get("symbol", "").upper() != self.symbol:
            return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        limit = int(request.query.get("limit", "1000"))
        n = self.snapshot_requests
        self.snapshot_requests += 1
        fault = self.faults.get(("stale", n))
        self._catch_up()
        book = self.book
        if fault is not None and self._copies.get(fault.book_at) is not None:
            book = self._copies[fault.book_at]
        if not book.synced:
            body = self.first_snapshot  # the client is still before it: it is newer
        else:
            body = book.body(limit)
        if book is self.book:
            self._need_snapshot = False
            self._served.set()
        elif self._need_snapshot:  # stale: stream one more diff, so the client can tell
            self._told = False
            self._served.set()  # wakes the stream now ...
            self._served.clear()  # ... and it waits again after that diff
        return web.Response(body=body, content_type="application/json")

    async def _stream(self, conn) -> None:
        from websockets.exceptions import ConnectionClosed

        self.connections += 1
        self._current = conn  # a reconnecting client: the old handler stops
        stream = self.symbol.lower().encode()
        pace0 = None
        try:
            while self.pos < len(self.messages) and self._current is conn:
                ts, raw, d = self.messages[self.pos]
                f = self._fault(d)
                if f is not None and (f.kind in ("drop", "corrupt") or f.lose):
                    self._need_snapshot = True  # the client will lose a diff
                    self._told = False
                    self._served.clear()
                if f is not None and f.kind in ("close", "stall"):
                    self._skip(f.lose)
                    if f.kind == "close":
                        await conn.close(1001, "going away")
                        return
                    await asyncio.sleep(f.seconds)  # silent; the client gives up on us
                    continue
                if self.speed > 0:
                    if pace0 is None:
                        pace0 = (time.monotonic(), ts)
                    delay = pace0[0] + (ts - pace0[1]) / 1e9 / self.speed - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                kind = f.kind if f is not None else None
                if kind == "garbage":
                    await conn.send(GARBAGE % stream, text=True)
                    self.delivered += 1
                if kind == "corrupt":
                    await conn.send(raw[: len(raw) // 2], text=True)
                elif kind != "drop":
                    await conn.send(raw, text=True)
                self.delivered += kind != "drop"
                # the book moves once the message is out (or dropped on purpose)
                if d is not None:
                    self._stream_diff(d)
                self.pos += 1
                self.sent += 1
                if d is not None and kind not in ("drop", "corrupt"):
                    self._told = True  # a diff after the loss: the client can tell
                if self._wait_snapshots and self._need_snapshot and self._told:
                    await self._served.wait()
                if self.speed == 0 and self.sent % 64 == 0:
                    await asyncio.sleep(0)  # let the REST server answer too
            if self.pos >= len(self.messages):
                self.done.set()
            await conn.wait_closed()
        except ConnectionClosed:
            return

    def _fault(self, d: dict | None) -> Fault | None:
        """The fault placed at this depth diff, once (a reconnect does not repeat it)."""
        if d is None:
            return None
        for kind in ("close", "stall", "drop", "corrupt", "garbage"):
            key = (kind, self.depth_n)
            if key in self.faults and key not in self._used:
                self._used.add(key)
                return self.faults[key]
        return None

    def _skip(self, n: int) -> None:
        """The market goes on while the client is away: ``n`` messages it never gets."""
        for _ in range(n):
            if self.pos >= len(self.messages):
                return
            d = self.messages[self.pos][2]
            if d is not None:
                self._stream_diff(d)
            self.pos += 1


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Serve a Binance recording on loopback.")
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--market", choices=sorted(DEPTH_PATHS), required=True)
    ap.add_argument("--symbol", required=True)
    ap.add_argument("--tick-size", required=True)
    ap.add_argument("--speed", type=float, default=0.0)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--max-messages", type=int, default=None)
    ap.add_argument("--linger-s", type=float, default=5.0, help="serve this long after the end")
    args = ap.parse_args(argv)
    ex = LoopbackExchange(
        args.files,
        market=args.market,
        symbol=args.symbol,
        tick_size=args.tick_size,
        speed=args.speed,
        start=args.start,
        max_messages=args.max_messages,
    )

    async def run() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(ex.serve(on_ready=lambda _: ready.set()))
        await ready.wait()
        print(ex.ws_url, ex.rest_url, len(ex.messages), flush=True)
        while not ex.done.is_set():
            await asyncio.sleep(0.05)
        await asyncio.sleep(args.linger_s)
        ex._stop.set()
        await task

    asyncio.run(run())


if __name__ == "__main__":
    main()
