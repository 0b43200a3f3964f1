"""Market-data ingest: the SUB socket, zero-copy frame parsing, and frame-level rejections.

One :class:`Ingest` owns its SUB socket and is used only from the daemon's loop thread. A round
drains what has arrived (non-blocking, at most ``max_drain`` messages), checks each frame
(contract 4: ``[b"md.<symbol>", EVENT_DTYPE bytes]``, one instrument per message), and returns
the accepted events as one contiguous batch for the book kernel. Bad frames are dropped and
counted by reason; nothing in a frame can stop the daemon.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import zmq

from lobstream.engine.config import IngestConfig
from lobstream.engine.metrics import Metrics, RateLimitedLog
from lobstream.engine.security import setup_curve
from lobstream.replay import wire

logger = logging.getLogger(__name__)

MD_PREFIX = b"md."


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
    """

    def __init__(
        self,
        ctx: zmq.Context,
        cfg: IngestConfig,
        symbols,
        metrics: Metrics,
        rlog: RateLimitedLog,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.rlog = rlog
        self.ids = {MD_PREFIX + s.encode(): i for i, s in enumerate(symbols)}
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, cfg.rcvhwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.auth = setup_curve(ctx, self.sock, cfg.curve, server=cfg.mode == "bind")
        for t in cfg.topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        for ep in cfg.endpoints:
            (self.sock.bind if cfg.mode == "bind" else self.sock.connect)(ep)
        logger.info("ingest %s %s, topics %s", cfg.mode, list(cfg.endpoints), list(cfg.topics))
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self._chunks: list[np.ndarray] = []
        self._frames: list[zmq.Frame] = []  # keep the buffers alive until concatenated
        self.backlog = False  # True when the last drain stopped at max_drain

    def wait(self, timeout_ms: int) -> bool:
        """Block up to ``timeout_ms`` for the next message; whether one is waiting."""
        return bool(self.poller.poll(timeout_ms))

    def drain(self) -> tuple[np.ndarray | None, int]:
        """Take what has arrived, at most ``max_drain`` messages, without blocking.

        Returns
        -------
        events : ndarray (n,) EVENT_DTYPE or None
            Accepted events of every good frame, in arrival order (a fresh array), or None.
        newest_ts_recv : int
            Largest ``ts_recv`` among them (0 when none carry one), for the receive stage.
        """
        recv = self.sock.recv_multipart
        chunks, frames = self._chunks, self._frames
        n_msg = n_ev = 0
        max_ts = 0
        self.backlog = False
        while True:
            if n_msg >= self.cfg.max_drain:
                self.backlog = True
                break
            try:
                parts = recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            n_msg += 1
            ev = self._parse(parts)
            if ev is None:
                continue
            frames.append(parts[1])
            chunks.append(ev)
            n_ev += len(ev)
            ts = int(ev["ts_recv"][-1])
            if ts > max_ts:
                max_ts = ts
        if n_msg:
            self.metrics.count("messages", n_msg)
        if not chunks:
            return None, 0
        self.metrics.count("events", n_ev)
        events = chunks[0].copy() if len(chunks) == 1 else np.concatenate(chunks)
        chunks.clear()
        frames.clear()
        if max_ts:
            self.metrics.observe("receive", max(time.monotonic_ns() - max_ts, 0) * 1e-9)
        return events, max_ts

    def _parse(self, parts: list) -> np.ndarray | None:
        if len(parts) != 2:
            self._reject("parts", "message with %s parts, expected [topic, events]", len(parts))
            return None
        topic = parts[0].bytes
        inst = self.ids.get(topic)
        if inst is None:
            self._reject("unknown_instrument", "unknown topic %r: not in the registry", topic)
            return None
        events, reason = wire.decode_events(parts[1].buffer)
        if events is None:
            self._reject(reason, "%s: bad frame (%s), %s bytes", topic, reason, len(parts[1]))
            return None
        if len(events) == 0:
            self._reject("empty", "%s: empty frame", topic)
            return None
        if (events["instrument"] != inst).any():
            self._reject(
                "wrong_instrument",
                "%s: events name instrument %s, the topic's id is %s",
                topic,
                int(events["instrument"][events["instrument"] != inst][0]),
                inst,
            )
            return None
        return events

    def _reject(self, reason: str, msg: str, *args) -> None:
        self.metrics.reject(reason)
        self.rlog.warning(reason, "dropped market-data message: " + msg, *args)

    def close(self) -> None:
        self.sock.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
