"""Publish a venue's market data to ``lobstream serve``: canonical events on ``md.<symbol>``.

The publisher is the public way in for a venue lobstream has no connector for. It owns one
ZeroMQ XPUB socket (bound by default; the daemon's ``ingest.mode = "connect"`` then connects to
it) and speaks the wire format of :mod:`lobstream.kernels.wire`: ``[b"md.<symbol>", raw
EVENT_DTYPE bytes]``, one instrument per message (version 1; ``with_header`` puts the version
header between the two frames).

What a feed handler sends, per instrument:

1. a snapshot first: :meth:`Publisher.snapshot` (``ACTION_CLEAR``, then one update per level,
   all ``FLAG_SNAPSHOT``, the last ``FLAG_LAST``): the daemon's book starts empty, and without
   a snapshot it would hold only the levels updated since it started;
2. then level changes: :meth:`Publisher.update`, one message per exchange packet (the last
   event has ``FLAG_LAST``: the book is consistent after it, so a feature row may be written);
   a size is the new absolute size at the price, 0 removes the level;
3. trades: :meth:`Publisher.trade` (not part of the book);
4. when the venue's own sequence breaks: :meth:`Publisher.gap` (the next event skips a
   sequence number, so the daemon marks the book stale), then a fresh snapshot.

Sequence numbers are per instrument and contiguous over book events (trades carry 0); the
publisher keeps the counter for the methods above. :meth:`Publisher.send` publishes events
built elsewhere (the Binance connector's, whose sequence numbers come from its update-id state
machine) as they are. Prices are given in quote currency (``str``, ``Decimal``, ``float`` or
``int``) and converted to integer ticks of the instrument's ``tick_size``, refusing off-grid
prices; :func:`encode_levels` is the same encoding without a socket.

``ts_event`` is the venue's time (ns since the epoch, UTC); ``ts_recv`` is when this host
received the data (``time.monotonic_ns()``), stamped at send when not given, and is what the
daemon's end-to-end latency is measured from.

A socket is used by one thread only; the publisher is not thread-safe. Sending never blocks
unless ``lossless`` (a subscriber beyond its ``hwm`` queue then makes the sender wait instead of
losing messages).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from decimal import Decimal

import numpy as np
import zmq

from lobstream.kernels import wire
from lobstream.kernels.dtypes import (
    ACTION_CLEAR,
    ACTION_TRADE,
    ACTION_UPDATE,
    EVENT_DTYPE,
    FLAG_LAST,
    FLAG_SNAPSHOT,
    SIDE_ASK,
    SIDE_BID,
)
from lobstream.kernels.registry import Instrument, Registry

logger = logging.getLogger(__name__)

Level = tuple  # (price in quote currency, size)

DEFAULT_HWM = 100_000
STATUS_TOPIC = b"feed.status"


def encode_levels(
    instrument: Instrument,
    seq0: int,
    bids: Iterable[Level],
    asks: Iterable[Level],
    *,
    ts_event: int,
    ts_recv: int = 0,
    snapshot: bool = False,
) -> np.ndarray:
    """Events of one book message: a snapshot (a clear, then every level) or level updates.

    Parameters
    ----------
    instrument : Instrument
        Its ``id`` and ``tick_size`` (prices off its grid raise ValueError).
    seq0 : int
        Sequence number of the first event; the events number on from it.
    bids, asks : iterables of (price, size)
        Price in quote currency, size the new absolute size (0 removes the level).
    snapshot : bool
        A snapshot starts with ``ACTION_CLEAR`` and flags every event ``FLAG_SNAPSHOT``.

    Returns
    -------
    ndarray (n,) EVENT_DTYPE
        The last event carries ``FLAG_LAST``; empty only for an update without levels.
    """
    levels = [(SIDE_BID, p, s) for p, s in bids] + [(SIDE_ASK, p, s) for p, s in asks]
    n = len(levels) + (1 if snapshot else 0)
    out = np.zeros(n, EVENT_DTYPE)
    if n == 0:
        return out
    k = 1 if snapshot else 0
    sizes = np.array([float(s) for _, _, s in levels], np.float64)
    bad = ~np.isfinite(sizes) | (sizes < 0)
    if bad.any():
        side, p, s = levels[int(np.flatnonzero(bad)[0])]
        raise ValueError(f"size {s!r} of {instrument.symbol} at {p} must be finite and >= 0")
    ticks = np.array([instrument.to_ticks(p) for _, p, _ in levels], np.int64)
    if (ticks <= 0).any():
        p = levels[int(np.flatnonzero(ticks <= 0)[0])][1]
        raise ValueError(f"price {p!r} of {instrument.symbol} must be positive")
    out["price"][k:] = ticks
    out["size"][k:] = sizes
    out["side"][k:] = [side for side, _, _ in levels]
    out["action"][k:] = ACTION_UPDATE
    if snapshot:
        out["action"][0] = ACTION_CLEAR
    out["instrument"] = instrument.id
    out["ts_event"] = ts_event
    out["ts_recv"] = ts_recv
    out["seq"] = np.arange(seq0, seq0 + n, dtype=np.uint64)
    if snapshot:
        out["flags"] = FLAG_SNAPSHOT
    out["flags"][-1] |= FLAG_LAST
    return out


class Publisher:
    """Canonical market data on ``md.<symbol>`` topics; use as a context manager.

    Parameters
    ----------
    endpoint : str
        ZeroMQ endpoint, e.g. ``ipc:///tmp/lobstream-md`` or ``tcp://127.0.0.1:5555``.
    registry : Registry, optional
        Instruments (symbol, tick size) known up front; :meth:`instrument` adds more.
    bind : bool
        Bind the endpoint (default; the daemon connects) or connect to a binding daemon.
    hwm : int
        Messages queued per subscriber before a slow one loses messages (0: unbounded).
    lossless : bool
        Wait for a slow subscriber instead of dropping (ZMQ_XPUB_NODROP).
    linger_ms : int
        How long :meth:`close` waits for queued messages to leave.
    ctx : zmq.Context, optional
        Defaults to the process-wide context.
    with_header : bool
        Send the wire's version header on every message (``[topic, b"LOB\\x01", payload]``);
        without it the two-frame form says version 1 (one frame less per message).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        registry: Registry | None = None,
        bind: bool = True,
        hwm: int = DEFAULT_HWM,
        lossless: bool = False,
        linger_ms: int = 1000,
        ctx: zmq.Context | None = None,
        with_header: bool = False,
    ) -> None:
        self.with_header = with_header
        self.registry = registry if registry is not None else Registry()
        self._ctx = ctx or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.LINGER, linger_ms)
        if lossless:
            self.sock.setsockopt(zmq.XPUB_NODROP, 1)
        # every subscription is reported, not only a topic's first: each joining subscriber
        # is seen (a feed can send it a fresh snapshot)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        try:
            (self.sock.bind if bind else self.sock.connect)(endpoint)
        except zmq.ZMQError:
            self.sock.close(0)
            raise
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT) if bind else endpoint
        self._topics: dict[int, bytes] = {}
        self._seq: dict[int, int] = {}
        self.subscriptions = 0  # subscriptions seen minus unsubscriptions
        self.joins = 0  # subscriptions seen
        self.messages = 0
        self.events = 0
        self.bytes = 0
        logger.info("publisher %s %s", "bound to" if bind else "connected to", self.endpoint)

    # -- context manager -----------------------------------------------------------------
    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    # -- instruments and sequence numbers ------------------------------------------------
    def instrument(self, symbol: str, tick_size: float | str | Decimal | None = None) -> Instrument:
        """The registered instrument ``symbol``, registering it with ``tick_size`` if new."""
        if symbol in self.registry:
            inst = self.registry.by_symbol(symbol)
            if tick_size is not None and inst.tick_size != Decimal(str(tick_size)):
                raise ValueError(
                    f"{symbol} is registered with tick_size {inst.tick_size}, not {tick_size}"
                )
            return inst
        if tick_size is None:
            raise KeyError(f"{symbol} is not registered; give its tick_size")
        return self.registry.add(symbol, tick_size)

    def next_seq(self, symbol: str) -> int:
        """The sequence number the next book event of ``symbol`` gets."""
        return self._seq.get(self.instrument(symbol).id, 0) + 1

    def gap(self, symbol: str) -> None:
        """Say that data of ``symbol`` was lost: the next book event skips one sequence
        number, so the daemon marks the book stale until the next :meth:`snapshot`."""
        i = self.instrument(symbol).id
        self._seq[i] = self._seq.get(i, 0) + 1

    # -- sending ---------------------------------------------------------------------------
    def snapshot(
        self,
        symbol: str,
        bids: Iterable[Level],
        asks: Iterable[Level],
        *,
        ts_event: int,
        ts_recv: int | None = None,
    ) -> int:
        """Publish the whole book of ``symbol`` (it replaces what the daemon holds); returns
        the number of events sent."""
        return self._book(symbol, bids, asks, ts_event, ts_recv, snapshot=True)

    def update(
        self,
        symbol: str,
        bids: Iterable[Level] = (),
        asks: Iterable[Level] = (),
        *,
        ts_event: int,
        ts_recv: int | None = None,
    ) -> int:
        """Publish level changes of one exchange packet (absolute sizes, 0 deletes)."""
        return self._book(symbol, bids, asks, ts_event, ts_recv, snapshot=False)

    def trade(
        self,
        symbol: str,
        price,
        size,
        aggressor: int,
        *,
        ts_event: int,
        ts_recv: int | None = None,
    ) -> int:
        """Publish a trade; ``aggressor`` is ``SIDE_BID`` for a buyer-initiated one."""
        if aggressor not in (SIDE_BID, SIDE_ASK):
            raise ValueError(f"aggressor must be SIDE_BID (0) or SIDE_ASK (1), got {aggressor}")
        inst = self.instrument(symbol)
        ev = np.zeros(1, EVENT_DTYPE)
        ev["ts_event"] = ts_event
        ev["ts_recv"] = time.monotonic_ns() if ts_recv is None else ts_recv
        ev["price"] = inst.to_ticks(price)
        ev["size"] = float(size)
        ev["instrument"] = inst.id
        ev["side"] = aggressor
        ev["action"] = ACTION_TRADE
        return self._send_one(inst.id, ev)

    def send(self, events: np.ndarray) -> int:
        """Publish ready-made events (any instruments; each becomes its own message, order
        kept within an instrument); returns the number of messages. Sequence numbers are
        sent as they are. Sent without a copy: do not modify ``events`` afterwards."""
        if events.dtype != EVENT_DTYPE:
            raise TypeError(f"events must have EVENT_DTYPE, got {events.dtype}")
        if len(events) == 0:
            return 0
        inst = events["instrument"]
        first = int(inst[0])
        if (inst == first).all():
            self._send_one(first, events)
            return 1
        order = np.argsort(inst, kind="stable")
        ordered = events[order]
        cuts = np.flatnonzero(np.diff(ordered["instrument"])) + 1
        parts = np.split(ordered, cuts)
        for part in parts:
            self._send_one(int(part["instrument"][0]), part)
        return len(parts)

    def status(self, payload: dict, topic: bytes = STATUS_TOPIC) -> None:
        """Publish a JSON heartbeat (not ``md.``: a daemon does not subscribe to it)."""
        self.sock.send_multipart([topic, json.dumps(payload).encode()])

    def poll_subscriptions(self) -> int:
        """Read the subscription messages that arrived; returns the subscriptions held."""
        while True:
            try:
                msg = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return self.subscriptions
            if msg[:1] == b"\x01":
                self.subscriptions += 1
                self.joins += 1
            elif msg[:1] == b"\x00":
                self.subscriptions -= 1

    def wait_for_subscribers(self, n: int = 1, timeout_s: float = 5.0) -> bool:
        """Wait until ``n`` subscriptions have arrived (ZeroMQ's slow joiner: what is sent
        before a subscriber's subscription reaches us is not delivered to it)."""
        deadline = time.monotonic() + timeout_s
        while self.poll_subscriptions() < n:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.poll(int(left * 1000) + 1, zmq.POLLIN)
        return True

    # -- internals -------------------------------------------------------------------------
    def _book(self, symbol, bids, asks, ts_event, ts_recv, snapshot: bool) -> int:
        inst = self.instrument(symbol)
        seq0 = self._seq.get(inst.id, 0) + 1
        ev = encode_levels(
            inst,
            seq0,
            bids,
            asks,
            ts_event=ts_event,
            ts_recv=time.monotonic_ns() if ts_recv is None else ts_recv,
            snapshot=snapshot,
        )
        if len(ev) == 0:
            return 0
        self._seq[inst.id] = seq0 + len(ev) - 1
        return self._send_one(inst.id, ev)

    def _send_one(self, inst: int, events: np.ndarray) -> int:
        topic = self._topics.get(inst)
        if topic is None:
            topic = self._topics[inst] = wire.topic(self.registry.by_id(inst).symbol)
        self.bytes += wire.send(self.sock, topic, events, with_header=self.with_header)
        self.messages += 1
        self.events += len(events)
        return len(events)
