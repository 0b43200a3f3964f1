"""Market-data ingest: the SUB socket, zero-copy frame parsing, and frame-level rejections.

One :class:`Ingest` owns its SUB socket and is used only from the daemon's loop thread. A round
drains what has arrived (non-blocking, at most ``max_drain`` messages), checks each frame
(contract 4: ``[b"md.<symbol>", EVENT_DTYPE bytes]``, one instrument per message, or the same
with :mod:`lobstream.kernels.wire`'s version header between the two), and returns
the accepted events as one contiguous batch for the book kernel. Bad frames are dropped and
counted by reason; nothing in a frame can stop the daemon.

A message is checked as a whole before any of its records reaches the book (one bad record
drops the message, counted once under its reason, see :mod:`lobstream.kernels.wire`): the
book applies records one by one, so a bad one in the middle of an accepted message would
otherwise change state that the rest of the message, and every later one, is judged by. The
time checks follow the instrument's clock as the book will have it, message by message,
starting from the book's ``last_ts``: a far-future record adopted by the book would make every
later event, the next snapshot included, look like time going backwards.

A feed that pauses is counted, not acted on: no message for longer than ``idle_after_s`` is an
idle period (``ingest.idle_periods``; the ``ingest_idle`` gauge is 1 until the next message,
``ingest.resumes``), and the longest gap between two messages is kept. Nothing else changes:
a pause marks no instrument stale (a quiet market is not a broken book), so the first message
after it gives signals again. Feeds connecting and disconnecting (a feed handler restarting) are
counted from a socket monitor (``ingest.peer_connected`` / ``ingest.peer_disconnected``), read
by :meth:`Ingest.account` every ``_PEER_POLL_S``; ZeroMQ reconnects and resubscribes itself.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import zmq

from lobstream.engine.config import IngestConfig
from lobstream.engine.metrics import Metrics, PeerMonitor, RateLimitedLog
from lobstream.engine.security import setup_curve
from lobstream.kernels import wire
from lobstream.kernels.dtypes import EVENT_DTYPE
from lobstream.kernels.wire import check_messages

logger = logging.getLogger(__name__)

_NOBLOCK = int(zmq.NOBLOCK)  # plain ints: no enum conversion per call
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)

_PEER_POLL_S = 0.25  # how often account() reads the socket monitor (feeds come and go)
_TS_MIN = np.iinfo(np.int64).min
_TS_MAX = np.iinfo(np.int64).max
# verdict of check_messages per message: 0 accepted, else the index of its reason here
VERDICTS = (wire.REASON_OK, *wire.CONTENT_REASONS)


class Ingest:
    """The daemon's market-data SUB socket.

    Parameters
    ----------
    ctx : zmq.Context
    cfg : IngestConfig
    symbols : sequence of str
        Symbol of each instrument id: topic ``md.<symbol>`` maps to that id.
    metrics : Metrics
    rlog : RateLimitedLog
    last_ts : ndarray (N,) int64, optional
        The book's ``last_ts`` (read, never written): where each instrument's clock stands
        for the ``max_ts_jump_s`` check. Without it the check follows a round only.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        cfg: IngestConfig,
        symbols,
        metrics: Metrics,
        rlog: RateLimitedLog,
        last_ts: np.ndarray | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.rlog = rlog
        self.symbols = list(symbols)
        self.ids = {wire.topic(s): i for i, s in enumerate(self.symbols)}
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, cfg.rcvhwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.auth = setup_curve(ctx, self.sock, cfg.curve, server=cfg.mode == "bind")
        for t in cfg.topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        self.peers = PeerMonitor(ctx, self.sock, "ingest")  # before the first connection
        for ep in cfg.endpoints:
            (self.sock.bind if cfg.mode == "bind" else self.sock.connect)(ep)
        logger.info("ingest %s %s, topics %s", cfg.mode, list(cfg.endpoints), list(cfg.topics))
        n = len(self.symbols)
        self.last_ts = last_ts if last_ts is not None else np.full(n, _TS_MIN, np.int64)
        self._ref = np.zeros(n, np.int64)  # scratch of check_messages
        self._mark = np.full(n, -1, np.int64)
        self._stamp = 0
        self._verdict = np.zeros(cfg.max_drain, np.int64)
        self._where = np.zeros(cfg.max_drain, np.int64)
        # instrument and record count of each accepted frame of the last drain
        self._frame_inst = np.zeros(cfg.max_drain, np.int64)
        self._frame_count = np.zeros(cfg.max_drain, np.int64)
        self._n_frames = 0
        self._taken_ns = 0  # monotonic ns when the last unchecked drain ended
        self._lead_ns = int(cfg.max_clock_lead_s * 1e9) if cfg.max_clock_lead_s > 0 else -1
        self._jump_ns = int(cfg.max_ts_jump_s * 1e9) if cfg.max_ts_jump_s > 0 else -1
        self.wall_ns = time.time_ns  # the host clock of the lead check (tests fix it)
        self._warm()
        self.backlog = False  # True when the last drain stopped at max_drain
        # what the last drain took, counted by account()
        self._n_msg = 0
        self._n_events = 0
        self._receive_ns: int | None = None
        self._drain_ns: int | None = None  # the Python of taking them: part of receive
        # feed pauses, followed by account() (off the hot path): when the last message came
        self._idle_after = cfg.idle_after_s
        self._last_msg: float | None = None  # monotonic s; None before the first message
        self._idle = False
        self._longest = 0.0
        self._next_peer_poll = 0.0

    def drain(self, check: bool = True) -> tuple[np.ndarray | None, int]:
        """Take what has arrived, at most ``max_drain`` messages, without blocking.

        Bad frames are counted here; messages, events and the receive stage by :meth:`account`.

        With ``check`` false the records are not checked here: the caller runs the check in a
        compiled call of its own (``check_messages(events, *self.checks())``, the daemon's
        fused quiet call) and then calls :meth:`taken`, or :meth:`check_now` when it failed.

        Returns
        -------
        events : ndarray (n,) EVENT_DTYPE or None
            Accepted events of every good frame, in arrival order, or None. A read-only view
            on one buffer holding the payloads of the round back to back (no per-event work).
        newest_ts_recv : int
            Largest ``ts_recv`` among them (0 when none carry one, or not checked here).
        """
        t0 = time.perf_counter_ns()
        recv = self.sock.recv
        more = self.sock.getsockopt
        ids = self.ids
        frame_inst, frame_count = self._frame_inst, self._frame_count
        bufs: list[bytes] = []
        n_msg = 0
        self.backlog = False
        while True:
            if n_msg >= self.cfg.max_drain:
                self.backlog = True
                break
            # past the first message (the poller said one is there), ask before each recv: a
            # recv that raises zmq.Again, how every round ended, costs several times the question
            if n_msg and not more(_EVENTS) & _POLLIN:
                break
            # Frame by frame with copy=True, not recv_multipart(copy=False): for payloads under
            # pyzmq's 64 KB zero-copy threshold a zmq.Frame and the multipart helper cost more
            # than the copy.
            # The one copy of each byte is the join below; parsing is a view (np.frombuffer).
            try:
                head = recv(_NOBLOCK)
            except zmq.Again:
                break
            n_msg += 1
            n_parts = 1
            body = mid = b""
            while more(_RCVMORE):  # the parts of a message arrive together: never blocks
                mid = body
                body = recv(_NOBLOCK)
                n_parts += 1
            if n_parts != 2:
                # three parts: a header between topic and payload (its version must be ours)
                reason = wire.header_reason(mid) if n_parts == 3 else wire.REASON_PARTS
                if reason != wire.REASON_OK:
                    self._reject(reason, "message with %s parts (%r), expected 2 or a version "
                                 "%s header", n_parts, mid[:8], wire.VERSION)  # fmt: skip
                    continue
            inst = ids.get(head)
            if inst is None:
                self._reject("unknown_instrument", "unknown topic %r: not in the registry", head)
                continue
            size = len(body)
            if size == 0 or size % wire.ITEMSIZE:
                reason = wire.REASON_EMPTY if size == 0 else wire.REASON_MISALIGNED
                self._reject(reason, "%s: bad frame (%s), %s bytes", head, reason, size)
                continue
            frame_inst[len(bufs)] = inst
            frame_count[len(bufs)] = size // wire.ITEMSIZE
            bufs.append(body)
        self._n_msg = n_msg
        self._n_frames = len(bufs)
        if not bufs:
            return None, 0
        events, reason = wire.decode_events(bufs[0] if len(bufs) == 1 else b"".join(bufs))
        if events is None:  # pragma: no cover - lengths were checked frame by frame
            self._reject(reason, "round of %s messages undecodable (%s)", len(bufs), reason)
            return None, 0
        if not check:
            self._taken_ns = time.monotonic_ns()
            self._drain_ns = time.perf_counter_ns() - t0
            return events, 0
        events, max_ts = self.check_now(events)
        self._drain_ns = time.perf_counter_ns() - t0
        return events, max_ts

    def checks(self) -> tuple:
        """The arguments of ``check_messages`` after the events, for the frames of the last
        :meth:`drain` (``check=False``); each call starts a new check (a new stamp)."""
        self._stamp += 1
        n = self._n_frames
        return (self._frame_inst[:n], self._frame_count[:n], self.last_ts, self._ref,
                self._mark, self._stamp, self._clock_limit(), self._jump_ns, self._verdict,
                self._where)  # fmt: skip

    def taken(self, n_events: int, max_ts: int) -> None:
        """The caller's check of the last unchecked drain accepted all ``n_events``, whose
        largest ``ts_recv`` is ``max_ts``: counted as :meth:`drain` counts its own."""
        self._n_events = n_events
        if max_ts > 0:
            self._receive_ns = max(self._taken_ns - max_ts, 0)

    def check_now(self, events: np.ndarray) -> tuple[np.ndarray | None, int]:
        """Check the events of the last drain here: drop, whole and counted, every message
        with a bad record; ``(accepted events or None, their largest ts_recv)``."""
        events = self._check(events)
        if len(events) == 0:
            return None, 0
        self._n_events = len(events)
        max_ts = int(events["ts_recv"].max())
        if max_ts > 0:
            self._receive_ns = max(time.monotonic_ns() - max_ts, 0)
        return events, max_ts

    @property
    def live(self) -> bool:
        """Whether market data flows: a message has come and no idle period has begun since
        (with ``idle_after_s = 0`` every time after the first message)."""
        return self._last_msg is not None and not self._idle

    def account(self) -> None:
        """Count what the last :meth:`drain` took (messages, events, receive latency).

        Kept out of :meth:`drain` so that the daemon can do it after the round's signals are
        out: none of it is needed to produce them.
        """
        m = self.metrics
        now = time.monotonic()
        if self._n_msg:
            m.count("messages", self._n_msg)
            m.backlog.set(1 if self.backlog else 0)
            self._n_msg = 0
            self._arrived(now)
        elif self._idle_after > 0 and not self._idle and self._last_msg is not None:
            if now - self._last_msg > self._idle_after:
                self._idle = True  # the pause is counted as it begins, and its end below
                m.feed_paused()
        if now >= self._next_peer_poll:
            self._next_peer_poll = now + _PEER_POLL_S
            self.peers.poll(m)
        if self._n_events:
            m.count("events", self._n_events)
            self._n_events = 0
        if self._receive_ns is not None:
            m.observe("receive", self._receive_ns * 1e-9)
            self._receive_ns = None
        if self._drain_ns is not None:
            m.observe("drain", self._drain_ns * 1e-9)
            self._drain_ns = None

    def _arrived(self, now: float) -> None:
        """Messages were taken at ``now``: end an idle period, keep the longest gap."""
        last, self._last_msg = self._last_msg, now
        if last is None:
            return  # the first message: the time before it is start-up, not a pause
        gap = now - last
        if gap > self._longest:
            self._longest = gap
            self.metrics.gap(gap)
        if self._idle_after > 0 and gap > self._idle_after:
            if not self._idle:  # the loop did not look while it lasted: counted now
                self.metrics.feed_paused()
            self._idle = False
            self.metrics.feed_resumed(gap)
            logger.info("market data resumed after %.1f s without a message", gap)

    def _clock_limit(self) -> int:
        if self._lead_ns < 0:
            return _TS_MAX
        return min(self.wall_ns() + self._lead_ns, _TS_MAX)

    def _check(self, events: np.ndarray) -> np.ndarray:
        """Drop, whole, every message with a bad record (the rules: ``check_messages``)."""
        args = self.checks()
        ins, cnt = args[0], args[1]
        if check_messages(events, *args) == 0:
            return events
        verdict = self._verdict[: len(ins)]
        starts = np.concatenate(([0], np.cumsum(cnt)[:-1]))
        for f in np.flatnonzero(verdict):
            k = int(starts[f] + self._where[f])
            ev = events[k]
            self._reject(
                VERDICTS[verdict[f]],
                "%s: record %s of %s (instrument %s, action %s, side %s, price %s, size %s, "
                "ts_event %s): %s",
                self.symbols[int(ins[f])], int(self._where[f]), int(cnt[f]), int(ev["instrument"]),
                int(ev["action"]), int(ev["side"]), int(ev["price"]), float(ev["size"]),
                int(ev["ts_event"]), VERDICTS[verdict[f]],
            )  # fmt: skip
        return events[np.repeat(verdict == 0, cnt)]

    def _warm(self) -> None:
        """Compile (or load) the frame check for writable and read-only records now, not on
        the first message."""
        ev = np.zeros(1, EVENT_DTYPE)
        one = np.zeros(1, np.int64)
        scratch = [np.zeros(1, np.int64) for _ in range(5)]
        for events in (ev, np.frombuffer(ev.tobytes(), EVENT_DTYPE)):
            check_messages(events, one, one + 1, np.full(1, _TS_MIN), *scratch[:2], 0,
                           _TS_MAX, -1, *scratch[2:4])  # fmt: skip

    def _reject(self, reason: str, msg: str, *args) -> None:
        self.metrics.reject(reason)
        self.rlog.warning(reason, "dropped market-data message: " + msg, *args)

    def close(self) -> None:
        self.peers.close()
        self.sock.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
