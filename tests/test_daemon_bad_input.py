"""Bad input never stops the daemon and never passes silently (contract 4).

Hypothesis sends malformed frames (wrong part counts, unknown topics, short and misaligned
payloads, events naming another instrument, events with bad fields); every message is counted,
every rejection has a reason, and the daemon keeps serving. A sequence gap makes an instrument
stale (no signals) until a snapshot heals it.
"""

from __future__ import annotations

import shutil
import tempfile
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lobstream.kernels.dtypes import (
    ACTION_CLEAR,
    ACTION_UPDATE,
    EVENT_DTYPE,
    FLAG_LAST,
    FLAG_SNAPSHOT,
    SIDE_ASK,
    SIDE_BID,
)
from lobstream.replay.synthetic import synthetic_events
from tests.test_daemon import Running, T, export_test_model, make_cfg

SYMBOLS = ["AAA", "BBB"]


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "cnn.pt"
    export_test_model(path)
    ipc = tempfile.mkdtemp(prefix="lobb", dir="/tmp")
    run = Running(make_cfg(ipc, path, SYMBOLS), SYMBOLS)
    # a healthy book for both instruments first, so bad events meet a live instrument
    run.wait_messages(run.send(synthetic_events(400, 2, seed=2, levels=4)))
    yield run
    run.stop()
    shutil.rmtree(ipc, ignore_errors=True)


def _valid(n: int, inst: int, seed: int) -> np.ndarray:
    ev = np.zeros(n, EVENT_DTYPE)
    ev["instrument"] = inst
    ev["ts_event"] = 2**62 + seed  # far ahead: never earlier than what the book has seen
    ev["price"] = 20_000
    ev["size"] = 1.0
    ev["side"] = SIDE_BID
    ev["action"] = ACTION_UPDATE
    return ev


BAD_FIELDS = {
    "side": 7,
    "action": 9,
    "price": -5,
    "size": float("nan"),
}


@st.composite
def bad_message(draw):
    """(parts, expected frame rejection reason or None, number of bad events inside)."""
    kind = draw(
        st.sampled_from(["parts", "unknown", "short", "misaligned", "wrong_inst", "bad_fields"])
    )
    topic = b"md." + draw(st.sampled_from(SYMBOLS)).encode()
    if kind == "parts":
        extra = draw(
            st.lists(st.binary(max_size=60), min_size=0, max_size=3).filter(lambda x: len(x) != 1)
        )
        return [topic, *extra], "parts", 0
    if kind == "unknown":
        name = draw(st.text("XYZ0123456789", min_size=1, max_size=6))
        return [b"md." + name.encode(), _valid(1, 0, 0).tobytes()], "unknown_instrument", 0
    if kind == "short":
        return [topic, b""], "empty", 0
    if kind == "misaligned":
        n = draw(st.integers(1, 300).filter(lambda n: n % EVENT_DTYPE.itemsize))
        return [topic, draw(st.binary(min_size=n, max_size=n))], "misaligned", 0
    inst = SYMBOLS.index(topic[3:].decode())
    n = draw(st.integers(1, 5))
    ev = _valid(n, inst, draw(st.integers(0, 1000)))
    if kind == "wrong_inst":
        ev["instrument"][draw(st.integers(0, n - 1))] = draw(st.sampled_from([1 - inst, 5, 2**31]))
        return [topic, ev.tobytes()], "wrong_instrument", 0
    bad = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    for k in bad:
        field = draw(st.sampled_from(sorted(BAD_FIELDS)))
        ev[field][k] = BAD_FIELDS[field]
    return [topic, ev.tobytes()], None, len(bad)


@settings(max_examples=40, deadline=None)
@given(st.lists(bad_message(), min_size=1, max_size=20))
def test_malformed_frames_are_counted_and_never_stop_it(running, messages):
    totals = running.daemon.metrics.totals
    before = dict(totals)
    for parts, _, _ in messages:
        running.send_raw(parts)
    running.wait_messages(before.get("messages", 0) + len(messages))
    assert running.thread.is_alive()
    for reason in ("parts", "empty", "misaligned", "unknown_instrument", "wrong_instrument"):
        want = sum(1 for _, r, _ in messages if r == reason)
        key = "rejected." + reason
        assert totals[key] - before.get(key, 0) == want, reason
    want_bad = sum(n for _, _, n in messages)
    assert totals["book.bad_event"] - before.get("book.bad_event", 0) == want_bad


def test_still_serving_after_bad_input(running):
    totals = running.daemon.metrics.totals
    before, n_before = totals["signals"], totals["messages"]
    running.send_raw([b"md.AAA", b"\x00" * 7])
    ev = synthetic_events(300, 2, seed=9, levels=4)
    # after the far-future timestamps of the bad-input test; its opening snapshot heals the
    # sequence restart
    ev["ts_event"] += 2**62 + 10**9
    n = running.send(ev)
    running.wait_messages(n_before + 1 + n)
    end = time.monotonic() + 20
    while running.daemon.metrics.totals["signals"] <= before:
        assert time.monotonic() < end, "no signal after bad input"
        time.sleep(0.01)
    assert n > 0


def _book_events(inst: int, seq0: int, ts0: int, steps: int, snapshot: bool) -> np.ndarray:
    """Optionally a snapshot (clear + 2 levels a side), then ``steps`` LAST updates."""
    rows = []
    seq, ts = seq0, ts0
    if snapshot:
        rows.append((ts, seq, 0, 0.0, SIDE_BID, ACTION_CLEAR, FLAG_SNAPSHOT))
        for px, side in ((100, SIDE_BID), (99, SIDE_BID), (101, SIDE_ASK), (102, SIDE_ASK)):
            seq += 1
            rows.append((ts, seq, px, 10.0, side, ACTION_UPDATE, FLAG_SNAPSHOT))
        rows[-1] = (*rows[-1][:6], FLAG_SNAPSHOT | FLAG_LAST)
    for k in range(steps):
        seq += 1
        ts += 1
        rows.append((ts, seq, 100, 10.0 + k % 5, SIDE_BID, ACTION_UPDATE, FLAG_LAST))
    ev = np.zeros(len(rows), EVENT_DTYPE)
    for j, (t, s, px, size, side, action, flags) in enumerate(rows):
        ev[j] = (t, time.monotonic_ns(), s, px, size, inst, side, action, flags)
    return ev


def test_gap_stale_snapshot_healthy(tmp_path):
    path = tmp_path / "cnn.pt"
    export_test_model(path)
    ipc = tempfile.mkdtemp(prefix="lobg", dir="/tmp")
    run = Running(make_cfg(ipc, path, ["AAA"], ingest={"max_drain": 1}), ["AAA"])
    try:
        ts = 1_000_000
        ev = _book_events(0, 1, ts, T + 5, snapshot=True)
        n = run.send_each(ev)
        run.wait_messages(n)
        sig, status = run.collect()
        assert len(sig) > 0 and status[-1]["instruments"]["AAA"]["state"] == "healthy"
        last_seq = int(ev["seq"][-1])
        # a gap: seq jumps by 2, then more updates that must produce no signal
        gap = _book_events(0, last_seq + 1, ts + 100, 6, snapshot=False)
        n += run.send_each(gap)
        run.wait_messages(n)
        sig, status = run.collect()
        assert len(sig) == 0
        assert run.daemon.metrics.totals["book.seq_gap"] == 1
        assert run.daemon.book.stale[0] == 1
        assert any(s["instruments"]["AAA"]["state"] == "stale" for s in status)
        assert any(s["stale"] == 1 for s in status)
        # a snapshot heals it; signals resume with the updates after it
        heal = _book_events(0, int(gap["seq"][-1]) + 1, ts + 200, 3, snapshot=True)
        n += run.send_each(heal)
        run.wait_messages(n)
        sig, status = run.collect()
        assert run.daemon.book.stale[0] == 0
        assert len(sig) > 0 and sig["seq"].min() > gap["seq"][-1]
        assert status[-1]["instruments"]["AAA"]["state"] == "healthy"
    finally:
        run.stop()
        shutil.rmtree(ipc, ignore_errors=True)


def test_topic_filter_takes_a_shard(tmp_path):
    path = tmp_path / "cnn.pt"
    export_test_model(path)
    ipc = tempfile.mkdtemp(prefix="lobs", dir="/tmp")
    run = Running(make_cfg(ipc, path, SYMBOLS, ingest={"topics": ["md.A"]}), SYMBOLS)
    try:
        ev = synthetic_events(600, 2, seed=12, levels=4)
        n_a = run.send(ev[ev["instrument"] == 0])
        run.send(ev[ev["instrument"] == 1])  # filtered out by ZeroMQ: never received
        run.send(ev[ev["instrument"] == 0][:1])  # a marker after them
        run.wait_messages(n_a + 1)
        time.sleep(0.2)
        totals = run.daemon.metrics.totals
        assert totals["messages"] == n_a + 1
        assert run.daemon.ring.count[1] == 0 and run.daemon.ring.count[0] > 0
    finally:
        run.stop()
        shutil.rmtree(ipc, ignore_errors=True)
