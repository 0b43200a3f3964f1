"""Bad input never stops the daemon and never passes silently (contract 4).

Hypothesis sends malformed frames (wrong part counts, unknown topics, short and misaligned
payloads, events naming another instrument, events with bad fields); every message is counted,
every rejection has a reason, and the daemon keeps serving. A sequence gap makes an instrument
stale (no signals) until a snapshot heals it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np
import pytest
import torch
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
from lobstream.models.artifact import export_model
from lobstream.models.zoo import build_model
from lobstream.replay.feed.synthetic import START_TS, synthetic_events
from tests.test_daemon import MANIFEST, Running, T, export_test_model, make_cfg

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
    # after what the book has seen, within a day of it and behind the host's clock
    ev["ts_event"] = START_TS + 10**12 + seed
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
    """(parts, expected frame rejection reason, number of bad records inside)."""
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
    return [topic, ev.tobytes()], "bad_event", len(bad)


@settings(max_examples=40, deadline=None)
@given(st.lists(bad_message(), min_size=1, max_size=20))
def test_malformed_frames_are_counted_and_never_stop_it(running, messages):
    totals = running.daemon.metrics.totals
    before = dict(totals)
    for parts, _, _ in messages:
        running.send_raw(parts)
    running.wait_messages(before.get("messages", 0) + len(messages))
    assert running.thread.is_alive()
    reasons = ("parts", "empty", "misaligned", "unknown_instrument", "wrong_instrument")
    for reason in (*reasons, "bad_event"):
        want = sum(1 for _, r, _ in messages if r == reason)
        key = "rejected." + reason
        assert totals[key] - before.get(key, 0) == want, reason
    # a bad record drops its whole message before the book sees any of it
    assert totals["book.bad_event"] - before.get("book.bad_event", 0) == 0


def test_still_serving_after_bad_input(running):
    totals = running.daemon.metrics.totals
    before, n_before = totals["signals"], totals["messages"]
    running.send_raw([b"md.AAA", b"\x00" * 7])
    ev = synthetic_events(300, 2, seed=9, levels=4)
    # after the timestamps of the bad-input test; its opening snapshot heals the sequence
    # restart
    ev["ts_event"] += 10**13
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


def test_far_future_record_then_snapshot_heals(tmp_path):
    """One well-formed record with a far-future ts_event and a huge seq must not leave the
    instrument stuck: the next snapshot heals it and signals resume."""
    path = tmp_path / "cnn.pt"
    export_test_model(path)
    ipc = tempfile.mkdtemp(prefix="lobf", dir="/tmp")
    run = Running(make_cfg(ipc, path, ["AAA"], ingest={"max_drain": 1}), ["AAA"])
    try:
        ts = 1_000_000
        ev = _book_events(0, 1, ts, T + 5, snapshot=True)
        n = run.send_each(ev)
        run.wait_messages(n)
        sig, _ = run.collect()
        assert len(sig) > 0
        bad = _book_events(0, 1, ts, 1, snapshot=False)
        bad["ts_event"] = 2**62
        bad["seq"] = 2**63
        n += run.send_each(bad)
        heal = _book_events(0, int(ev["seq"][-1]) + 1, ts + 200, T + 1, snapshot=True)
        n += run.send_each(heal)
        run.wait_messages(n)
        sig, _ = run.collect()
        assert len(sig) > 0, sorted(run.daemon.metrics.totals.items())
        assert sig["seq"].min() > ev["seq"][-1]
        assert run.daemon.book.stale[0] == 0
    finally:
        run.stop()
        shutil.rmtree(ipc, ignore_errors=True)


# --- any interleaving of malformed and valid traffic, then a snapshot: signals again --------

BASE_TS = 1_000_000_000_000_000_000  # 2001-09: test data lies in the daemon's past
HOST_NS = BASE_TS + 30 * 86_400 * 10**9  # the daemon's wall clock, fixed for the test
DAY_NS = 86_400 * 10**9
FAR_FUTURE = 2**62


class Feed:
    """Per-instrument clock and sequence of the valid traffic, across examples."""

    def __init__(self) -> None:
        self.ts = [BASE_TS, BASE_TS]  # of the last valid event
        self.seq = [0, 0]

    def update(self, inst: int, k: int = 0) -> np.ndarray:
        ev = _book_events(inst, self.seq[inst], self.ts[inst], 1, snapshot=False)
        ev["size"] = 10.0 + k % 7
        self.seq[inst] += 1
        self.ts[inst] += 1
        return ev

    def heal(self, inst: int, steps: int) -> np.ndarray:
        ev = _book_events(inst, self.seq[inst] + 1, self.ts[inst] + 1, steps, snapshot=True)
        self.seq[inst] = int(ev["seq"][-1])
        self.ts[inst] = int(ev["ts_event"][-1])
        return ev


@pytest.fixture(scope="module")
def healing():
    with tempfile.TemporaryDirectory(prefix="lobh", dir="/tmp") as ipc:
        # a compiled BiN-CTABL: its rounds are the fused call's (models.quiet), whose frame
        # check must drop what the stage-by-stage path drops (the torch model of ``running``)
        path = os.path.join(ipc, "binctabl.pt")
        torch.manual_seed(0)
        model = build_model("binctabl", T=T, levels=2, hidden1=(6, 3), hidden2=(5, 2)).eval()
        export_model(model, path, MANIFEST)
        run = Running(make_cfg(ipc, path, SYMBOLS), SYMBOLS)
        assert run.daemon.quiet is not None
        run.daemon.ingest.wall_ns = lambda: HOST_NS  # no real clock decides a rejection
        feed = Feed()
        try:
            n = sum(run.send(feed.heal(i, T + 2)) for i in range(2))
            run.wait_messages(n)
            run.collect(0.1)
            yield run, feed
        finally:
            run.stop()


def _content_bad(ev: np.ndarray) -> bool:
    """Contract 4's content rules: bad side or action, non-positive price, bad size."""
    upd = ev["action"] != ACTION_CLEAR
    size = ev["size"]
    bad = (ev["action"] > 2) | (
        upd & ((ev["side"] > 1) | (ev["price"] <= 0) | ~(np.isfinite(size) & (size >= 0)))
    )
    return bool(bad.any())


KINDS = [
    "valid", "random", "records", "parts", "unknown", "empty", "misaligned", "nan_size",
    "neg_price", "bad_side", "bad_action", "wrong_inst", "gap", "far_future", "jump",
    "huge_seq",
]  # fmt: skip


@st.composite
def traffic(draw):
    """A list of (kind, instrument, data) to be turned into messages in order."""
    n = draw(st.integers(1, 25))
    out = []
    for _ in range(n):
        kind = draw(st.sampled_from(KINDS))
        inst = draw(st.integers(0, 1))
        if kind in ("random", "misaligned"):
            size = draw(st.integers(1, 400).filter(lambda s: s % EVENT_DTYPE.itemsize))
            data = draw(st.binary(min_size=size, max_size=size))
        elif kind == "records":
            k = draw(st.integers(1, 60))
            data = draw(st.binary(min_size=k * 48, max_size=k * 48))
        elif kind == "parts":
            data = draw(st.lists(st.binary(max_size=60), max_size=3).filter(lambda x: len(x) != 1))
        else:
            data = draw(st.integers(0, 1000))
        out.append((kind, inst, data))
    return out


def _message(kind: str, inst: int, data, feed: Feed):
    """(parts, the reason it must be rejected for, or None when the book applies it)."""
    topic = b"md." + SYMBOLS[inst].encode()
    seq, ts = feed.seq[inst], feed.ts[inst]
    ev = _book_events(inst, seq, ts, 1, snapshot=False)  # the next valid event, not sent
    if kind == "valid":
        return [topic, feed.update(inst, data).tobytes()], None
    if kind == "parts":
        return [topic, *data], "parts"
    if kind == "unknown":
        return [b"md.Q" + str(data).encode(), ev.tobytes()], "unknown_instrument"
    if kind == "empty":
        return [topic, b""], "empty"
    if kind in ("random", "misaligned"):
        return [topic, data], "misaligned"
    if kind == "records":
        # random records naming this instrument, far in the future: bad content or bad time,
        # never applied
        ev = np.frombuffer(data, EVENT_DTYPE).copy()
        ev["instrument"] = inst
        ev["ts_event"] = FAR_FUTURE + (ev["ts_event"] & 0xFFFF)
        return [topic, ev.tobytes()], ("bad_event" if _content_bad(ev) else "ts_future")
    if kind == "gap":
        ev["seq"] = seq + 2 + data
        feed.ts[inst] += 1
        return [topic, ev.tobytes()], None
    if kind == "huge_seq":
        ev["seq"] = 2**63 + data
        feed.ts[inst] += 1
        return [topic, ev.tobytes()], None
    reason = {
        "nan_size": ("size", float("nan"), "bad_event"),
        "neg_price": ("price", -1 - data, "bad_event"),
        "bad_side": ("side", 2 + data % 250, "bad_event"),
        "bad_action": ("action", 3 + data % 250, "bad_event"),
        "wrong_inst": ("instrument", [1 - inst, 7, 2**31][data % 3], "wrong_instrument"),
        "far_future": ("ts_event", FAR_FUTURE + data, "ts_future"),
        "jump": ("ts_event", ts + 2 * DAY_NS + data, "ts_jump"),
    }[kind]
    ev[reason[0]] = reason[1]
    return [topic, ev.tobytes()], reason[2]


def _seq_gaps(applied: list[np.ndarray], prev: dict) -> int:
    """Gaps the book counts among the applied events (both instruments, in order), the last
    seq applied before them being ``prev[instrument]``."""
    prev = dict(prev)
    gaps = 0
    for ev in applied:
        i, s = int(ev["instrument"][0]), int(ev["seq"][0])
        if ev["action"][0] == ACTION_CLEAR:
            prev[i] = int(ev["seq"][-1])  # a snapshot restarts the sequence
            continue
        if prev.get(i) and s != prev[i] + 1:
            gaps += 1
        prev[i] = int(ev["seq"][-1])
    return gaps


@settings(max_examples=40, deadline=None)
@given(traffic())
def test_any_bad_traffic_then_a_snapshot_gives_signals_again(healing, plan):
    run, feed = healing
    totals = run.daemon.metrics.totals
    before = dict(totals)
    want = {}
    applied = []
    prev_seq = dict(enumerate(feed.seq))
    sent = 0
    for kind, inst, data in plan:
        parts, reason = _message(kind, inst, data, feed)
        run.send_raw(parts)
        sent += 1
        if reason is None:
            applied.append(np.frombuffer(parts[1], EVENT_DTYPE))
        else:
            want[reason] = want.get(reason, 0) + 1
    heals = [feed.heal(i, T + 1) for i in range(2)]
    for ev in heals:
        sent += run.send_each(ev)
        applied.append(ev[:1])  # the clear restarts the sequence
        applied.extend(ev[k : k + 1] for k in range(1, len(ev)))
    run.wait_messages(before["messages"] + sent)
    sig, _ = run.collect(0.2)
    assert run.thread.is_alive()
    for i, ev in enumerate(heals):
        mine = sig[sig["instrument"] == i]
        assert (mine["seq"] > ev["seq"][0]).any(), (SYMBOLS[i], sorted(totals.items()))
    got = {
        k[len("rejected.") :]: v - before.get(k, 0)
        for k, v in totals.items()
        if k.startswith("rejected.") and v != before.get(k, 0)
    }
    assert got == want
    delta = {
        k: totals.get(k, 0) - before.get(k, 0)
        for k in ("book.bad_event", "book.time_backwards", "book.seq_gap")
    }
    assert delta["book.bad_event"] == 0 and delta["book.time_backwards"] == 0
    assert delta["book.seq_gap"] == _seq_gaps(applied, prev_seq)
    assert not run.daemon.book.stale.any()
