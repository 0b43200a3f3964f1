"""Publish event batches as a live market-data feed over ZeroMQ (contract 4).

Messages
--------
Each message is ``[b"md.<symbol>", events]`` (:mod:`lobstream.kernels.wire`) holding
consecutive events of one instrument, cut only at the end of a LAST group (or where the
instrument changes), packed up to ``batch`` events (a single longer group, such as a deep
snapshot, stays whole). With ``speed > 0`` a message also spans no more than ``coalesce_us``
of wall time (0: only groups with the same ``ts_event``), so pacing stays per group.

Pacing
------
A message is due at ``start + (ts_event - ts_event of the first event) / speed``; ``speed = 0``
sends as fast as possible. ``ts_recv`` of every event is stamped with ``time.monotonic_ns()``
just before its message is sent. When time goes backwards between batches (a second file), the
pacing clock restarts at that event, so files are replayed one after the other. Pacing error =
send time - due time, reported as p50 / p99 in microseconds.

Snapshots
---------
Each instrument starts with a snapshot: events of an instrument before its first
``ACTION_CLEAR`` (or ``FLAG_SNAPSHOT`` event) are not sent but counted
(``dropped_before_snapshot``): a subscriber could not build a book from them. LOBSTER, the
Binance recordings with a REST snapshot, Tardis and Databento MBO start with one; a source
without any (a continuation file alone) sends nothing for that instrument unless
``require_snapshot=False``, in which case the daemon marks the book stale until one arrives.

Several files
-------------
By default files are played one after the other (the pacing clock restarts where time goes
back). :func:`merge_by_time` interleaves several sources by time instead (``--merge``), for
several instruments at once; it must not be given two files of the same instrument that
overlap in time.

Sockets
-------
The socket is an XPUB (a PUB that also reports subscriptions) that binds (default) or
connects. Before sending it waits ``wait`` seconds for subscribers to connect (ZeroMQ's slow
joiner), or less once ``subscribers`` subscriptions have arrived. ``hwm`` bounds each
subscriber's queue in messages; beyond it a PUB drops, unless ``lossless`` (XPUB_NODROP) makes
the sender wait instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import zmq

from lobstream.kernels import wire
from lobstream.kernels.dtypes import ACTION_CLEAR, EVENT_DTYPE, FLAG_LAST, FLAG_SNAPSHOT
from lobstream.kernels.registry import Registry
from lobstream.replay.feed.cuts import message_cuts

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 1024
DEFAULT_HWM = 100_000
_SPIN_NS = 200_000  # below this, wait by spinning: sleep() overshoots short waits


def _group_keys(events: np.ndarray) -> np.ndarray:
    """ts_event of the first event of each event's LAST group, (n,) int64."""
    ends = (events["flags"] & FLAG_LAST) != 0
    gid = np.concatenate(([0], np.cumsum(ends[:-1])))
    starts = np.flatnonzero(np.concatenate(([True], ends[:-1])))
    return events["ts_event"][starts][gid]


def merge_by_time(sources: Sequence[Iterable[np.ndarray]]) -> Iterator[np.ndarray]:
    """Interleave the batches of several sources (e.g. one reader per file) by ``ts_event``.

    Whole LAST groups are ordered by the time of their first event, ties in source order; each
    source's own order is kept, so its groups stay contiguous. Memory: one batch per source.
    Sources must each be in time order (readers validate that).
    """
    its = [iter(s) for s in sources]
    bufs = [np.empty(0, EVENT_DTYPE) for _ in its]
    live = [True] * len(its)

    def refill(i: int) -> None:
        # A buffer of a live source always ends with a whole group (LAST).
        while live[i] and (len(bufs[i]) == 0 or not bufs[i]["flags"][-1] & FLAG_LAST):
            try:
                nxt = next(its[i])
            except StopIteration:
                live[i] = False
                break
            bufs[i] = np.concatenate([bufs[i], nxt]) if len(bufs[i]) else nxt

    for i in range(len(its)):
        refill(i)
    while any(len(b) for b in bufs):
        # Nothing later than the earliest "last seen" time of a live source is safe yet.
        tails = [(int(b["ts_event"][-1]), i) for i, b in enumerate(bufs) if live[i] and len(b)]
        horizon, first = min(tails) if tails else (np.iinfo(np.int64).max, -1)
        parts, keys = [], []
        for i, b in enumerate(bufs):
            if len(b) == 0:
                continue
            if i == first or not live[i]:
                k = len(b)
            else:
                k = int(np.searchsorted(np.maximum.accumulate(b["ts_event"]), horizon, "right"))
                last = np.flatnonzero(b["flags"][:k] & FLAG_LAST)
                k = int(last[-1]) + 1 if len(last) else 0  # whole groups only
            if k:
                parts.append(b[:k])
                keys.append(_group_keys(b[:k]))
                bufs[i] = b[k:]
                refill(i)
        merged = np.concatenate(parts)
        yield merged[np.argsort(np.concatenate(keys), kind="stable")]


@dataclass
class ReplayStats:
    """What a replay did; rates in events per second, pacing errors in microseconds."""

    events: int = 0
    messages: int = 0
    bytes: int = 0
    seconds: float = 0.0
    dropped_before_snapshot: int = 0
    pacing_p50_us: float | None = None
    pacing_p99_us: float | None = None
    per_symbol: dict[str, int] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "events": self.events,
            "messages": self.messages,
            "bytes": self.bytes,
            "seconds": self.seconds,
            "events_per_s": self.events_per_s,
            "dropped_before_snapshot": self.dropped_before_snapshot,
            "pacing_p50_us": self.pacing_p50_us,
            "pacing_p99_us": self.pacing_p99_us,
            "per_symbol": dict(self.per_symbol),
        }


class Replayer:
    """An XPUB socket publishing event batches; use as a context manager.

    Parameters
    ----------
    endpoint : str
        ZeroMQ endpoint, e.g. ``ipc:///tmp/md.sock`` or ``tcp://127.0.0.1:5555``.
    bind : bool
        Bind (default) or connect.
    speed, batch, coalesce_us, wait, subscribers, hwm, lossless, require_snapshot
        See the module docstring.
    linger_ms : int
        How long closing waits for queued messages to leave.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = True,
        speed: float = 1.0,
        batch: int = DEFAULT_BATCH,
        coalesce_us: float = 0.0,
        wait: float = 1.0,
        subscribers: int = 0,
        hwm: int = DEFAULT_HWM,
        lossless: bool = False,
        require_snapshot: bool = True,
        linger_ms: int = 5000,
        ctx: zmq.Context | None = None,
    ) -> None:
        if speed < 0:
            raise ValueError(f"speed must be >= 0 (0: as fast as possible), got {speed}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1 event per message, got {batch}")
        self.speed = speed
        self.batch = batch
        self.max_span = np.iinfo(np.int64).max if speed == 0 else int(coalesce_us * 1000 * speed)
        self.require_snapshot = require_snapshot
        self._ctx = ctx or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.LINGER, linger_ms)
        if lossless:
            self.sock.setsockopt(zmq.XPUB_NODROP, 1)
        (self.sock.bind if bind else self.sock.connect)(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT) if bind else endpoint
        self._wait = wait
        self._subscribers = subscribers
        self._joined = 0
        self._topics: dict[int, tuple[bytes, str]] = {}
        self._started: set[int] = set()
        message_cuts(np.zeros(2, EVENT_DTYPE), 1, 0)  # compile (or load) now, not mid-replay
        logger.info("replayer %s %s", "bound to" if bind else "connected to", self.endpoint)

    def __enter__(self) -> Replayer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def wait_for_subscribers(self) -> int:
        """Wait up to ``wait`` s (less once ``subscribers`` joined); returns how many joined."""
        deadline = time.monotonic() + self._wait
        while (left := deadline - time.monotonic()) > 0:
            if self._subscribers and self._joined >= self._subscribers:
                break
            if self.sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                msg = self.sock.recv()
                if msg[:1] == b"\x01":
                    self._joined += 1
        return self._joined

    def run(
        self,
        batches: Iterable[np.ndarray],
        registry: Registry,
        *,
        progress: Callable[[ReplayStats], None] | None = None,
        progress_every_s: float = 0.25,
    ) -> ReplayStats:
        """Send every batch (EVENT_DTYPE arrays, modified in place: ``ts_recv`` is stamped).

        ``registry`` names the instrument ids (topic ``md.<symbol>``). ``progress`` is called
        with the running stats about every ``progress_every_s`` seconds.
        """
        from hdrh.histogram import HdrHistogram

        hist = HdrHistogram(1, 3_600_000_000, 3)
        stats = ReplayStats()
        self.wait_for_subscribers()
        send = self.sock.send_multipart
        mono = time.monotonic_ns
        t_first = None
        wall0 = ts0 = prev_ts = None
        next_progress = time.monotonic() + progress_every_s
        for batch in batches:
            if len(batch) == 0:
                continue
            if batch.dtype != EVENT_DTYPE:
                raise TypeError(f"batches must have EVENT_DTYPE, got {batch.dtype}")
            if not batch.flags.writeable:  # ts_recv is stamped in place
                batch = batch.copy()
            cuts = message_cuts(batch, self.batch, self.max_span)
            ts_all = batch["ts_event"]
            inst_all = batch["instrument"]
            a = 0
            for b in cuts.tolist():
                msg = batch[a:b]
                inst = int(inst_all[a])
                first_ts = int(ts_all[a])
                a = b
                if inst not in self._started:
                    msg = self._from_snapshot(msg, inst, stats)
                    if msg is None:
                        continue
                named = self._topics.get(inst)
                if named is None:
                    sym = registry.by_id(inst).symbol
                    named = self._topics[inst] = (wire.topic(sym), sym)
                topic, sym = named
                due = None
                if self.speed > 0:
                    if wall0 is None or first_ts < prev_ts:
                        wall0, ts0 = mono(), first_ts
                    due = wall0 + int((first_ts - ts0) / self.speed)
                    _wait_until(due)
                    prev_ts = first_ts
                now = mono()
                msg["ts_recv"] = now
                send([topic, msg], copy=False)
                if t_first is None:
                    t_first = now
                if due is not None:
                    hist.record_value(max(1, (now - due) // 1000))
                stats.events += len(msg)
                stats.messages += 1
                stats.bytes += msg.nbytes
                stats.per_symbol[sym] = stats.per_symbol.get(sym, 0) + len(msg)
                if progress is not None and time.monotonic() >= next_progress:
                    stats.seconds = (mono() - t_first) / 1e9
                    progress(stats)
                    next_progress = time.monotonic() + progress_every_s
        if t_first is not None:
            stats.seconds = (mono() - t_first) / 1e9
        if hist.get_total_count():
            stats.pacing_p50_us = float(hist.get_value_at_percentile(50))
            stats.pacing_p99_us = float(hist.get_value_at_percentile(99))
        if stats.dropped_before_snapshot:
            logger.warning(
                "%d events sent no snapshot first and were not sent",
                stats.dropped_before_snapshot,
            )
        return stats

    def _from_snapshot(self, msg: np.ndarray, inst: int, stats: ReplayStats):
        if not self.require_snapshot:
            self._started.add(inst)
            return msg
        starts = np.flatnonzero(
            (msg["action"] == ACTION_CLEAR) | (msg["flags"] & FLAG_SNAPSHOT != 0)
        )
        if len(starts) == 0:
            stats.dropped_before_snapshot += len(msg)
            return None
        self._started.add(inst)
        stats.dropped_before_snapshot += int(starts[0])
        return msg[int(starts[0]) :]


def _wait_until(due_ns: int) -> None:
    left = due_ns - time.monotonic_ns()
    if left > _SPIN_NS:
        time.sleep((left - _SPIN_NS) / 1e9)
    while time.monotonic_ns() < due_ns:
        pass
