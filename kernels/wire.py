"""Market data on the wire (DESIGN.md contract 4): ``[b"md.<symbol>", payload]``.

The payload is the raw little-endian bytes of a C-contiguous ``EVENT_DTYPE`` array, one
instrument per message (the topic names it, so a subscriber can shard by topic prefix). No
per-event encoding: the sender hands zmq the numpy buffer (``copy=False``) and the receiver
views the frame with ``np.frombuffer``.

Versions: a message of two frames is version 1, this format. A message may instead carry a
header frame between topic and payload, ``[topic, b"LOB" + bytes([version]), payload]``
(:data:`HEADER`, :func:`header`); version 1 sent that way is the same message. A later format
is always sent with its header, so a receiver that does not know that version drops it,
counted as ``"version"``, instead of misreading it. The header is four bytes, not one, so
that a stray frame is not taken for one: a three-frame message whose middle frame does not
start with ``b"LOB"`` is a ``"parts"`` error like any other frame count.

Decoding is total: a bad frame yields ``(None, reason)`` with a short reason string that the
daemon counts as a metric label, never an exception through the receive loop. Reasons:

- ``"parts"``: not two frames, nor three with a header in the middle;
- ``"version"``: a header naming a version this receiver does not read;
- ``"topic"``: the topic is not ``md.<symbol>`` with a non-empty UTF-8 symbol;
- ``"empty"``: a zero-length payload;
- ``"misaligned"``: the payload length is not a multiple of the event size (48 bytes).

A live receiver then checks each message's records as a whole before any of them reaches the
book (:func:`check_messages` here; :mod:`lobstream.engine.ingest` counts the verdicts and says
why a message is judged as a whole), and drops the message for one of :data:`CONTENT_REASONS`:

- ``"wrong_instrument"``: a record names another instrument than the topic;
- ``"bad_event"``: unknown action, or (not a clear) unknown side, price <= 0, size < 0 or not
  finite;
- ``"ts_future"``: a ``ts_event`` too far ahead of the receiving host's clock;
- ``"ts_jump"``: a ``ts_event`` too far ahead of the instrument's last accepted event (a clear
  restarts the clock: it opens a snapshot).

Time going backwards and sequence gaps are the book kernel's to count (they depend on the
order of what it applied). Padding bytes of an event carry no data and may hold anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from lobstream.kernels._jit import njit
from lobstream.kernels.dtypes import ACTION_CLEAR, ACTION_TRADE, EVENT_DTYPE, SIDE_ASK

TOPIC_PREFIX = b"md."
ITEMSIZE = EVENT_DTYPE.itemsize
VERSION = 1  # the payload layout this module reads and writes
HEADER_MAGIC = b"LOB"

REASON_OK = "ok"
REASON_PARTS = "parts"
REASON_TOPIC = "topic"
REASON_EMPTY = "empty"
REASON_MISALIGNED = "misaligned"
REASON_VERSION = "version"
REASONS = (REASON_PARTS, REASON_TOPIC, REASON_EMPTY, REASON_MISALIGNED, REASON_VERSION)
REASON_WRONG_INSTRUMENT = "wrong_instrument"
REASON_BAD_EVENT = "bad_event"
REASON_TS_FUTURE = "ts_future"
REASON_TS_JUMP = "ts_jump"
CONTENT_REASONS = (REASON_WRONG_INSTRUMENT, REASON_BAD_EVENT, REASON_TS_FUTURE, REASON_TS_JUMP)

_TS_MIN = np.iinfo(np.int64).min


class Decoded(NamedTuple):
    """One decoded message: ``events`` is None unless ``reason == "ok"``."""

    symbol: str | None
    events: np.ndarray | None
    reason: str


def header(version: int = VERSION) -> bytes:
    """The header frame naming ``version`` (0..255)."""
    return HEADER_MAGIC + bytes([version])


HEADER = header()


def header_reason(frame: bytes) -> str:
    """``"ok"`` for this version's header, ``"version"`` for another version's, ``"parts"``
    for a frame that is not a header."""
    if frame == HEADER:
        return REASON_OK
    if len(frame) == len(HEADER) and frame.startswith(HEADER_MAGIC):
        return REASON_VERSION
    return REASON_PARTS


def topic(symbol: str) -> bytes:
    """The topic frame of ``symbol``'s market data."""
    if not symbol:
        raise ValueError("symbol must be non-empty")
    return TOPIC_PREFIX + symbol.encode()


def symbol_of(topic_frame: bytes) -> str | None:
    """The symbol in a topic frame, or None if it is not ``md.<symbol>``."""
    if not topic_frame.startswith(TOPIC_PREFIX) or len(topic_frame) == len(TOPIC_PREFIX):
        return None
    try:
        return topic_frame[len(TOPIC_PREFIX) :].decode()
    except UnicodeDecodeError:
        return None


def encode(symbol_topic: bytes, events: np.ndarray, with_header: bool = False) -> list:
    """Frames for ``sock.send_multipart(frames, copy=False)``.

    Parameters
    ----------
    symbol_topic : bytes
        From :func:`topic` (computed once per instrument by the caller).
    events : ndarray (n,) EVENT_DTYPE
        One instrument's events. Sent without a copy when C-contiguous, so the caller must not
        modify it until zmq has sent it (give each message its own array or slice).
    with_header : bool
        Put :data:`HEADER` between topic and payload (the same version-1 message, one frame
        longer; without it the two-frame form says version 1).
    """
    if events.dtype != EVENT_DTYPE:
        raise TypeError(f"events must have EVENT_DTYPE, got {events.dtype}")
    if with_header:
        return [symbol_topic, HEADER, np.ascontiguousarray(events)]
    return [symbol_topic, np.ascontiguousarray(events)]


def send(sock, symbol_topic: bytes, events: np.ndarray, flags: int = 0,
         with_header: bool = False) -> int:  # fmt: skip
    """Send one message zero-copy; returns the payload size in bytes."""
    frames = encode(symbol_topic, events, with_header)
    sock.send_multipart(frames, flags=flags, copy=False)
    return frames[-1].nbytes


def decode_events(payload) -> tuple[np.ndarray | None, str]:
    """View a payload (bytes, memoryview, any buffer) as events: ``(events, "ok")`` or
    ``(None, reason)``. The array is read-only when the buffer is; it is copied only if the
    buffer is not 8-byte aligned (Numba kernels need aligned records)."""
    n = memoryview(payload).nbytes
    if n == 0:
        return None, REASON_EMPTY
    if n % ITEMSIZE:
        return None, REASON_MISALIGNED
    events = np.frombuffer(payload, dtype=EVENT_DTYPE)
    if not events.flags.aligned:
        events = events.copy()
    return events, REASON_OK


def decode(frames: Sequence) -> Decoded:
    """Decode a received multipart message (a list of ``bytes`` or ``zmq.Frame``), with or
    without a header frame."""
    if len(frames) == 3:
        mid = frames[1]
        reason = header_reason(mid.bytes if hasattr(mid, "bytes") else bytes(mid))
        if reason != REASON_OK:
            return Decoded(None, None, reason)
        frames = (frames[0], frames[2])
    elif len(frames) != 2:
        return Decoded(None, None, REASON_PARTS)
    head, body = frames
    head = head.bytes if hasattr(head, "bytes") else bytes(head)
    symbol = symbol_of(head)
    if symbol is None:
        return Decoded(None, None, REASON_TOPIC)
    events, reason = decode_events(body.buffer if hasattr(body, "buffer") else body)
    return Decoded(symbol, events, reason)


@njit
def check_messages(events, insts, counts, last_ts, ref, mark, stamp, clock_limit, jump_ns,
                   verdict, where):  # fmt: skip
    """Judge each message ``f`` (records ``counts[f]`` long, back to back in ``events``) as a
    whole: ``verdict[f]`` (0 accepted, 1 wrong instrument, 2 bad event, 3 too far in the
    future, 4 too far a jump ahead) and ``where[f]``, its first bad record. ``ref`` is
    the instrument's clock as the book will have it after the accepted messages so far
    (``mark[i] == stamp`` once taken from ``last_ts`` this round). Returns the bad count."""
    n_bad = 0
    start = 0
    for f in range(insts.shape[0]):
        inst = insts[f]
        end = start + counts[f]
        v = 0
        w = start
        for k in range(start, end):
            if events[k].instrument != inst:
                v = 1
                w = k
                break
        if v == 0:
            for k in range(start, end):
                ev = events[k]
                size = ev.size
                # the book kernel's content rule, on the whole message first
                if ev.action > ACTION_TRADE or (
                    ev.action != ACTION_CLEAR
                    and (
                        ev.side > SIDE_ASK
                        or ev.price <= 0
                        or not (size >= 0.0 and size - size == 0.0)
                    )
                ):
                    v = 2
                    w = k
                    break
        if v == 0:
            for k in range(start, end):
                if events[k].ts_event > clock_limit:
                    v = 3
                    w = k
                    break
        if v == 0:
            if mark[inst] != stamp:
                mark[inst] = stamp
                ref[inst] = last_ts[inst]
            r = ref[inst]
            for k in range(start, end):
                ev = events[k]
                ts = ev.ts_event
                if ev.action == ACTION_CLEAR:
                    r = ts  # a snapshot restarts the clock (the book does the same)
                elif ts > r:
                    # unsigned: the difference of two int64 always fits
                    if (
                        r != _TS_MIN
                        and jump_ns >= 0
                        and np.uint64(ts) - np.uint64(r) > np.uint64(jump_ns)
                    ):
                        v = 4
                        w = k
                        break
                    r = ts
            if v == 0:
                ref[inst] = r
        verdict[f] = v
        where[f] = w - start
        n_bad += v != 0
        start = end
    return n_bad
