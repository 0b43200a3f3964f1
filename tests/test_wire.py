"""The market-data wire: zero-copy encode, total decode (reasons instead of exceptions)."""

from __future__ import annotations

import numpy as np
import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from lobstream.kernels import wire
from lobstream.kernels.dtypes import EVENT_DTYPE


def make_events(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ev = np.zeros(n, EVENT_DTYPE)
    ev["ts_event"] = np.sort(rng.integers(0, 10**18, n))
    ev["seq"] = np.arange(1, n + 1)
    ev["price"] = rng.integers(1, 10**6, n)
    ev["size"] = rng.random(n) * 100
    ev["side"] = rng.integers(0, 2, n)
    ev["flags"] = 1
    return ev


def fields_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return len(a) == len(b) and all(
        np.ascontiguousarray(a[f]).tobytes() == np.ascontiguousarray(b[f]).tobytes()
        for f in EVENT_DTYPE.names
    )


def test_topic_roundtrip():
    assert wire.topic("GOOG") == b"md.GOOG"
    assert wire.symbol_of(b"md.BTC-PERPETUAL") == "BTC-PERPETUAL"
    assert wire.symbol_of(b"md.") is None
    assert wire.symbol_of(b"sig.GOOG") is None
    assert wire.symbol_of(b"md.\xff") is None
    with pytest.raises(ValueError):
        wire.topic("")


@pytest.mark.parametrize("transport", ["inproc", "ipc", "tcp"])
def test_send_receive_zero_copy(tmp_path, transport):
    ctx = zmq.Context.instance()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    for s in (pull, push):
        s.linger = 0
        s.rcvtimeo = 5000
    try:
        if transport == "tcp":
            port = pull.bind_to_random_port("tcp://127.0.0.1")
            push.connect(f"tcp://127.0.0.1:{port}")
        else:
            ep = f"ipc://{tmp_path}/w.sock" if transport == "ipc" else "inproc://wire-test"
            pull.bind(ep)
            push.connect(ep)
        sent = [make_events(n, n) for n in (1, 7, 5000)]  # small ones are copied by pyzmq
        for ev in sent:
            assert wire.send(push, wire.topic("GOOG"), ev) == ev.nbytes
        for ev in sent:
            msg = wire.decode(pull.recv_multipart(copy=False))
            assert msg.reason == "ok" and msg.symbol == "GOOG"
            assert msg.events.flags.aligned and fields_equal(msg.events, ev)
    finally:
        pull.close()
        push.close()


def test_encode_makes_strided_contiguous_and_checks_dtype():
    ev = make_events(10)
    frames = wire.encode(b"md.X", ev[::2])
    assert frames[1].flags.c_contiguous and fields_equal(frames[1], ev[::2])
    assert wire.encode(b"md.X", ev)[1] is ev  # contiguous: no copy
    with pytest.raises(TypeError, match="EVENT_DTYPE"):
        wire.encode(b"md.X", np.zeros(3))


def test_bad_frames_give_reasons():
    good = make_events(3).tobytes()
    assert wire.decode([b"md.A"]).reason == "parts"
    assert wire.decode([b"md.A", good, b""]).reason == "parts"
    assert wire.decode([b"xx.A", good]).reason == "topic"
    assert wire.decode([b"md.A", b""]).reason == "empty"
    assert wire.decode([b"md.A", good[:-1]]) == ("A", None, "misaligned")
    ok = wire.decode([b"md.A", good])
    assert ok.reason == "ok" and len(ok.events) == 3


def test_version_header():
    ev = make_events(3)
    frames = wire.encode(b"md.A", ev, with_header=True)
    assert frames[1] == wire.HEADER == b"LOB\x01" and frames[2] is ev
    ok = wire.decode([frames[0], frames[1], ev.tobytes()])
    assert ok.reason == "ok" and ok.symbol == "A" and fields_equal(ok.events, ev)
    # another version is told apart from a stray frame
    assert wire.decode([b"md.A", wire.header(2), ev.tobytes()]) == (None, None, "version")
    assert wire.decode([b"md.A", b"LOB", ev.tobytes()]).reason == "parts"
    assert wire.decode([b"md.A", b"\x01", ev.tobytes()]).reason == "parts"
    # two frames are version 1 whatever they hold: a header alone is a 4-byte payload
    assert wire.decode([b"md.A", wire.HEADER]).reason == "misaligned"
    # the rest of the checks apply after the header
    assert wire.decode([b"xx.A", wire.HEADER, ev.tobytes()]).reason == "topic"
    assert wire.decode([b"md.A", wire.HEADER, b""]).reason == "empty"
    assert wire.header_reason(wire.header(255)) == "version"
    assert wire.header_reason(b"LOB\x01\x00") == "parts"


def test_send_with_header(ipc_dir):
    ctx = zmq.Context.instance()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    for s in (pull, push):
        s.linger = 0
        s.rcvtimeo = 5000
    try:
        pull.bind(f"ipc://{ipc_dir}/h.sock")
        push.connect(f"ipc://{ipc_dir}/h.sock")
        ev = make_events(5)
        assert wire.send(push, wire.topic("GOOG"), ev, with_header=True) == ev.nbytes
        frames = pull.recv_multipart()
        assert len(frames) == 3 and frames[1] == wire.HEADER
        msg = wire.decode(frames)
        assert msg.reason == "ok" and fields_equal(msg.events, ev)
    finally:
        pull.close()
        push.close()


def test_unaligned_buffer_is_copied():
    ev = make_events(4)
    raw = bytearray(1) + bytearray(ev.tobytes())
    events, reason = wire.decode_events(memoryview(raw)[1:])
    assert reason == "ok" and events.flags.aligned and fields_equal(events, ev)


@given(
    st.binary(max_size=400),
    st.binary(max_size=20),
    st.integers(0, 4),
    st.sampled_from([b"", b"LOB\x01", b"LOB\x02", b"LOB"]),
)
def test_decode_is_total(payload, head, n_frames, mid):
    frames = [head, payload, b"x", b"y"][:n_frames]
    if n_frames == 3 and mid:
        frames = [head, mid, payload]
    msg = wire.decode(frames)  # never raises
    assert msg.reason in (*wire.REASONS, "ok")
    if msg.reason == "ok":
        assert len(frames) == 2 or frames[1] == wire.HEADER
        assert len(payload) % wire.ITEMSIZE == 0 and len(msg.events) * wire.ITEMSIZE == len(payload)
    else:
        assert msg.events is None
