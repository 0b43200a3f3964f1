"""The signal publisher: a PUB socket owned by the daemon's loop thread.

Sends ``[b"sig.<symbol>", payload]`` per signal (binary ``SIGNAL_DTYPE`` record or JSON, see
:mod:`lobstream.engine.signals`) and the JSON status heartbeat. Sends never block: when a
subscriber is slow ZeroMQ drops at its high-water mark, so the hot path never waits for it.

A PUB socket does not say who listens, so subscribers coming and going are counted from a
ZeroMQ socket monitor on it (:meth:`Publisher.poll_peers`, read once per heartbeat, never per
signal): ``publish.peer_connected`` / ``publish.peer_disconnected`` and the gauge of peers now.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import zmq

from lobstream.engine.config import PublishConfig
from lobstream.engine.metrics import PeerMonitor
from lobstream.engine.security import setup_curve
from lobstream.engine.signals import encode_json, signal_topic

logger = logging.getLogger(__name__)

_NOBLOCK = int(zmq.NOBLOCK)  # plain ints: no enum arithmetic per call
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)


class Publisher:
    """PUB socket for signals and status.

    Parameters
    ----------
    ctx : zmq.Context
    cfg : PublishConfig
    symbols : sequence of str
        Symbol of each instrument id (topics are built once here).
    """

    def __init__(self, ctx: zmq.Context, cfg: PublishConfig, symbols, metrics=None) -> None:
        self.cfg = cfg
        self.metrics = metrics  # lobstream.engine.metrics.Metrics for poll_peers (optional)
        self.json = cfg.encoding == "json"
        self.symbols = list(symbols)
        self.topics = [signal_topic(s) for s in self.symbols]
        self.status_topic = cfg.status_topic.encode()
        self._viewed: np.ndarray | None = None  # the records whose bytes _raw views
        self._raw = memoryview(b"")
        self.sock = ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.SNDHWM, cfg.sndhwm)
        self.sock.setsockopt(zmq.LINGER, cfg.linger_ms)
        self.auth = setup_curve(ctx, self.sock, cfg.curve, server=cfg.mode == "bind")
        # Subscribers are counted by a socket monitor, not by making this an XPUB that counts
        # (un)subscriptions: an XPUB passes on a topic's subscription only for its first
        # subscriber and its unsubscription only for its last (unless XPUB_VERBOSER), so a
        # second subscriber, or one of two leaving, goes unseen; its subscription messages
        # must be read or they queue; and it would change the socket every signal goes
        # through. The monitor sees every connection, bind or connect, ipc:// or tcp://, and
        # is read once per heartbeat (poll_peers), never per signal.
        self.monitor = PeerMonitor(ctx, self.sock, "publish")
        if cfg.mode == "bind":
            self.sock.bind(cfg.endpoint)
        else:
            self.sock.connect(cfg.endpoint)
        logger.info("publishing signals on %s (%s, %s)", cfg.endpoint, cfg.mode, cfg.encoding)

    def send_signals(self, records: np.ndarray, n: int | None = None) -> None:
        """Publish one message per record, of the first ``n`` (default: all).

        Parameters
        ----------
        records : ndarray (B,) SIGNAL_DTYPE
            Not modified. Must have been allocated zeroed (padding bytes are sent as they are).
            The same buffer call after call (the daemon's, with ``n``) reuses its byte view.
        """
        send = self.sock.send_multipart
        if n is None:
            n = len(records)
        if self.json:
            for k in range(n):
                i = int(records[k]["instrument"])
                send([self.topics[i], encode_json(records[k], self.symbols[i])], zmq.NOBLOCK)
            return
        if records is not self._viewed:
            self._viewed, self._raw = records, memoryview(records.view(np.uint8)).cast("B")
        raw = self._raw
        size = records.dtype.itemsize
        topics = self.topics
        part = self.sock.send
        # Two plain sends per message rather than send_multipart: its per-part Python work was
        # most of the publish stage at high load (100 records per batch). PUB never blocks on a
        # full peer queue (it drops); NOBLOCK guards a connecting PUB.
        for k, i in enumerate(records["instrument"][:n].tolist()):
            part(topics[i], _MORE_NOBLOCK)
            part(raw[k * size : (k + 1) * size], _NOBLOCK)

    def poll_peers(self, metrics=None) -> tuple[int, int]:
        """Count the subscribers that connected and disconnected since the last poll
        (``publish.peer_connected`` / ``publish.peer_disconnected`` of ``metrics``, default:
        the one given at construction). Non-blocking and bounded; from the loop thread once
        per heartbeat. Returns ``(connected, disconnected)`` of this poll."""
        return self.monitor.poll(metrics if metrics is not None else self.metrics)

    def send_status(self, status: dict) -> None:
        try:
            self.sock.send_multipart(
                [self.status_topic, json.dumps(status, separators=(",", ":")).encode()],
                zmq.NOBLOCK,
            )
        except zmq.Again:
            logger.debug("status heartbeat dropped: publisher queue full")

    def close(self) -> None:
        self.monitor.close()
        self.sock.close(linger=self.cfg.linger_ms)
        if self.auth is not None:
            self.auth.stop()
