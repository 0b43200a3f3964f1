"""A small subscriber for the daemon's signals and status heartbeat.

Example::

    import logging

    from lobstream.engine.subscriber import Subscriber

    log = logging.getLogger("signals")
    with Subscriber("ipc:///tmp/lobstream-sig", symbols=["GOOG"]) as sub:
        for msg in sub.iter(timeout_s=5.0):
            if msg.kind == "signal":
                log.info("%s %s %s", msg.symbol, msg.records["prob"], msg.latency_ns)

The socket belongs to the thread that created the subscriber (ZeroMQ sockets never cross
threads).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import zmq
import zmq.auth

from lobstream.engine.signals import SIGNAL_TOPIC_PREFIX, decode


@dataclass
class Message:
    """One received message.

    ``kind`` is "signal" (``records``: ndarray (n,) SIGNAL_DTYPE, or SIGNAL_V2_DTYPE from a
    multi-horizon model with every head's ``head_prob``; a private copy) or "status"
    (``status``: the decoded heartbeat dict). ``t_recv_ns`` is ``time.monotonic_ns()`` at receipt,
    the clock the daemon stamps ``ts_recv``/``ts_publish`` with on the same host.
    """

    kind: str
    topic: bytes
    t_recv_ns: int
    records: np.ndarray | None = None
    status: dict | None = None

    @property
    def symbol(self) -> str:
        return self.topic[len(SIGNAL_TOPIC_PREFIX) :].decode(errors="replace")

    @property
    def latency_ns(self) -> np.ndarray:
        """Receipt time minus ``ts_recv`` of the newest event in each window, ns (n,) int64."""
        return self.t_recv_ns - self.records["ts_recv"]


class Subscriber:
    """Connects a SUB socket to the daemon's signal endpoint.

    Parameters
    ----------
    endpoint : str or sequence of str
        The daemon's ``publish.endpoint``; several (instruments sharded over daemons by topic
        prefix, contract 4): one socket connects to all, and their signals and heartbeats
        arrive interleaved (a heartbeat's ``model.sha256`` says whose).
    symbols : iterable of str, optional
        Only these symbols' signals; all when None.
    status_topic : str or None
        Also receive the heartbeat on this topic; None for signals only.
    curve_secret_key, curve_server_public_key : str, optional
        Certificate files (zmq.auth) when the daemon publishes with CurveZMQ.
    """

    def __init__(
        self,
        endpoint: str | Iterable[str],
        symbols: Iterable[str] | None = None,
        status_topic: str | None = "status",
        curve_secret_key: str = "",
        curve_server_public_key: str = "",
        context: zmq.Context | None = None,
    ) -> None:
        self._own_ctx = context is None
        self.ctx = context or zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 1_000_000)
        if curve_secret_key:
            pub, sec = zmq.auth.load_certificate(curve_secret_key)
            server_pub, _ = zmq.auth.load_certificate(curve_server_public_key)
            self.sock.curve_publickey = pub
            self.sock.curve_secretkey = sec
            self.sock.curve_serverkey = server_pub
        if symbols is None:
            self.sock.setsockopt(zmq.SUBSCRIBE, SIGNAL_TOPIC_PREFIX)
        else:
            for s in symbols:
                # the trailing part is exact only up to the prefix match ZeroMQ does
                self.sock.setsockopt(zmq.SUBSCRIBE, SIGNAL_TOPIC_PREFIX + s.encode())
        self.status_topic = status_topic.encode() if status_topic else None
        if self.status_topic:
            self.sock.setsockopt(zmq.SUBSCRIBE, self.status_topic)
        for ep in [endpoint] if isinstance(endpoint, str) else endpoint:
            self.sock.connect(ep)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)

    def recv(self, timeout_s: float | None = None) -> Message | None:
        """The next message, or None when ``timeout_s`` passes first."""
        timeout = None if timeout_s is None else int(timeout_s * 1000)
        if not self.poller.poll(timeout):
            return None
        topic, payload = self.sock.recv_multipart()
        t = time.monotonic_ns()
        if self.status_topic is not None and topic == self.status_topic:
            return Message("status", topic, t, status=json.loads(payload))
        return Message("signal", topic, t, records=decode(payload).copy())

    def iter(self, timeout_s: float = 1.0) -> Iterator[Message]:
        """Messages until ``timeout_s`` passes with none."""
        while (msg := self.recv(timeout_s)) is not None:
            yield msg

    def close(self) -> None:
        self.sock.close(linger=0)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
