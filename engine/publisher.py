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
import struct

import numpy as np
import zmq

from lobstream.engine.config import PublishConfig
from lobstream.engine.security import setup_curve
from lobstream.engine.signals import encode_json, signal_topic

logger = logging.getLogger(__name__)

_NOBLOCK = int(zmq.NOBLOCK)  # plain ints: no enum arithmetic per call
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
# Peer events of the monitor. A transport connection is a subscriber: ACCEPTED where we bind,
# CONNECTED where we connect (a lost one is retried by ZeroMQ and CONNECTED again), and
# DISCONNECTED in both modes, so the two counts balance. Why a monitor and not an XPUB that
# counts (un)subscriptions: an XPUB passes on a topic's subscription only for its first
# subscriber and its unsubscription only for its last (unless XPUB_VERBOSER), so a second
# subscriber, or one of two leaving, goes unseen; its subscription messages must be read or
# they queue; and it would change the socket every signal goes through. The monitor sees every
# connection in both modes over ipc:// and tcp:// and is read off the hot path.
_PEER_UP = int(zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED)
_PEER_DOWN = int(zmq.EVENT_DISCONNECTED)
_MONITOR_MAX = 10_000  # monitor messages read per poll: a poll is bounded whatever the churn


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
        self.sock = ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.SNDHWM, cfg.sndhwm)
        self.sock.setsockopt(zmq.LINGER, cfg.linger_ms)
        self.auth = setup_curve(ctx, self.sock, cfg.curve, server=cfg.mode == "bind")
        self.monitor = self._open_monitor(ctx)
        self.peers = 0  # connected subscribers, as far as the monitor has been read
        if cfg.mode == "bind":
            self.sock.bind(cfg.endpoint)
        else:
            self.sock.connect(cfg.endpoint)
        logger.info("publishing signals on %s (%s, %s)", cfg.endpoint, cfg.mode, cfg.encoding)

    def send_signals(self, records: np.ndarray) -> None:
        """Publish one message per record.

        Parameters
        ----------
        records : ndarray (B,) SIGNAL_DTYPE
            Not modified. Must have been allocated zeroed (padding bytes are sent as they are).
        """
        send = self.sock.send_multipart
        if self.json:
            for k in range(len(records)):
                i = int(records[k]["instrument"])
                send([self.topics[i], encode_json(records[k], self.symbols[i])], zmq.NOBLOCK)
            return
        raw = memoryview(records.view(np.uint8)).cast("B")
        size = records.dtype.itemsize
        topics = self.topics
        part = self.sock.send
        # Two plain sends per message rather than send_multipart: its per-part Python work was
        # most of the publish stage at high load (100 records per batch). PUB never blocks on a
        # full peer queue (it drops); NOBLOCK guards a connecting PUB.
        for k, i in enumerate(records["instrument"].tolist()):
            part(topics[i], _MORE_NOBLOCK)
            part(raw[k * size : (k + 1) * size], _NOBLOCK)

    def _open_monitor(self, ctx: zmq.Context) -> zmq.Socket:
        # before bind/connect, so the first peer is seen. Not get_monitor_socket(): the PAIR
        # that reads the events must have RCVHWM 0 before it connects. libzmq sends monitor
        # events blocking, from its I/O thread; with a bounded pipe, events left unread between
        # two polls would stall that thread (and with it the market-data socket). Unbounded is
        # safe: the pipe holds only connect/disconnect events, drained every heartbeat.
        addr = f"inproc://lobstream-pub-monitor-{id(self)}"
        self.sock.monitor(addr, _PEER_UP | _PEER_DOWN)
        mon = ctx.socket(zmq.PAIR)
        mon.setsockopt(zmq.RCVHWM, 0)
        mon.setsockopt(zmq.LINGER, 0)
        mon.connect(addr)
        return mon

    def poll_peers(self, metrics=None) -> tuple[int, int]:
        """Count the subscribers that connected and disconnected since the last poll.

        Non-blocking and bounded; called from the loop thread once per heartbeat, never per
        signal. Adds to ``publish.peer_connected`` / ``publish.peer_disconnected`` of
        ``metrics`` (default: the one given at construction) and sets the peers gauge.
        Returns ``(connected, disconnected)`` of this poll.
        """
        up = down = 0
        mon = self.monitor
        if mon is None:
            return 0, 0
        for _ in range(_MONITOR_MAX):
            try:
                frames = mon.recv_multipart(zmq.NOBLOCK)
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
        m = metrics if metrics is not None else self.metrics
        if m is not None and (up or down):
            m.peer_events(up, down, self.peers)
        return up, down

    def send_status(self, status: dict) -> None:
        try:
            self.sock.send_multipart(
                [self.status_topic, json.dumps(status, separators=(",", ":")).encode()],
                zmq.NOBLOCK,
            )
        except zmq.Again:
            logger.debug("status heartbeat dropped: publisher queue full")

    def close(self) -> None:
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None
        self.sock.close(linger=self.cfg.linger_ms)
        if self.auth is not None:
            self.auth.stop()
