"""The ZeroMQ replayer: message packing, snapshots first, and a real SUB socket counting every
event over ipc:// and tcp://127.0.0.1."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zmq
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from lobstream.cli import main
from lobstream.kernels import wire
from lobstream.kernels.dtypes import ACTION_CLEAR, EVENT_DTYPE, FLAG_LAST, FLAG_SNAPSHOT
from lobstream.kernels.registry import Registry
from lobstream.replay.feed.cuts import message_cuts
from lobstream.replay.feed.replayer import Replayer, merge_by_time
from lobstream.replay.readers import lobster
from lobstream.replay.readers.parquet import ParquetWriter

AAPL999 = "lobster/truncated_first999/AAPL_2012-06-21_34200000_57600000_message_10.csv"


def stream(n_groups: int, instruments=(0,), group=3, gap_ns=1000, snapshot=True) -> np.ndarray:
    """Groups of ``group`` events ending with LAST, instruments in turn, the first group of
    each instrument a CLEAR + snapshot."""
    ev = np.zeros(n_groups * group, EVENT_DTYPE)
    ev["ts_event"] = 10**18 + np.repeat(np.arange(n_groups), group) * gap_ns
    ev["instrument"] = np.repeat(np.resize(np.asarray(instruments), n_groups), group)
    ev["price"] = 100
    ev["size"] = 1.0
    ev["flags"][group - 1 :: group] = FLAG_LAST
    if snapshot:
        for i in instruments:
            first = np.flatnonzero(ev["instrument"] == i)[:group]
            ev["action"][first[0]] = ACTION_CLEAR
            ev["flags"][first] |= FLAG_SNAPSHOT
    return ev


class Counter(threading.Thread):
    """A SUB socket in its own thread counting events until ``expected`` or a timeout."""

    def __init__(self, ctx, endpoint: str | None, expected: int, timeout_s: float = 20.0):
        super().__init__(daemon=True)
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"md.")
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.linger = 0
        if endpoint is None:
            self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        else:
            self.sock.connect(endpoint)
        self.expected = expected
        self.timeout_ms = int(timeout_s * 1000)
        self.chunks: list[np.ndarray] = []
        self.reasons: list[str] = []
        self.symbols: set[str] = set()

    def run(self) -> None:
        got = 0
        try:
            while got < self.expected and self.sock.poll(self.timeout_ms):
                msg = wire.decode(self.sock.recv_multipart(copy=False))
                if msg.reason != "ok":
                    self.reasons.append(msg.reason)
                    continue
                self.symbols.add(msg.symbol)
                self.chunks.append(msg.events.copy())
                got += len(msg.events)
        finally:
            self.sock.close()

    def events(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.empty(0, EVENT_DTYPE)


def same_but_ts_recv(a: np.ndarray, b: np.ndarray) -> bool:
    names = [f for f in EVENT_DTYPE.names if f != "ts_recv"]
    return len(a) == len(b) and all((a[f] == b[f]).all() for f in names)


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_real_subscriber_counts_every_event(data_dir, tmp_path, transport):
    reg = Registry()
    batches = list(lobster.read(data_dir / AAPL999, reg, batch_rows=300))
    want = np.concatenate(batches)
    ctx = zmq.Context()
    try:
        if transport == "ipc":
            ep = f"ipc://{tmp_path}/md.sock"
            rep = Replayer(ep, speed=0, batch=64, wait=10, subscribers=1, ctx=ctx)
            sub = Counter(ctx, ep, len(want))
        else:  # the subscriber binds a random port, the replayer connects
            sub = Counter(ctx, None, len(want))
            rep = Replayer(
                f"tcp://127.0.0.1:{sub.port}",
                bind=False,
                speed=0,
                batch=64,
                wait=10,
                subscribers=1,
                ctx=ctx,
            )
        sub.start()
        with rep:
            stats = rep.run(iter(batches), reg)
        sub.join(30)
        assert not sub.is_alive()
    finally:
        ctx.term()
    got = sub.events()
    assert stats.events == len(want) == len(got) and not sub.reasons
    assert sub.symbols == {"AAPL"} and stats.per_symbol == {"AAPL": len(want)}
    assert same_but_ts_recv(got, want)
    assert (got["ts_recv"] > 0).all() and (np.diff(got["ts_recv"]) >= 0).all()
    assert stats.messages >= len(want) // 64 and stats.bytes == len(want) * EVENT_DTYPE.itemsize


def test_paced_replay_reports_pacing(tmp_path):
    reg = Registry()
    reg.add("A", "0.01")
    reg.add("B", "0.01")
    ev = stream(30, instruments=(0, 1), gap_ns=2_000_000)  # 60 ms of market time
    ctx = zmq.Context()
    try:
        ep = f"ipc://{tmp_path}/p.sock"
        sub = Counter(ctx, ep, len(ev))
        sub.start()
        with Replayer(ep, speed=4.0, wait=10, subscribers=1, ctx=ctx) as rep:
            stats = rep.run([ev[:39], ev[39:]], reg)
        sub.join(30)
    finally:
        ctx.term()
    assert len(sub.events()) == len(ev) == stats.events
    assert sub.symbols == {"A", "B"}
    assert stats.messages == 30  # one LAST group per message when paced
    assert stats.pacing_p50_us is not None and stats.pacing_p99_us >= stats.pacing_p50_us


def test_events_before_a_snapshot_are_not_sent(tmp_path):
    reg = Registry()
    reg.add("A", "0.01")
    ev = np.concatenate([stream(2, snapshot=False), stream(3)])
    ctx = zmq.Context()
    try:
        ep = f"ipc://{tmp_path}/s.sock"
        sub = Counter(ctx, ep, 9, timeout_s=2)
        sub.start()
        with Replayer(ep, speed=0, wait=10, subscribers=1, ctx=ctx) as rep:
            stats = rep.run([ev], reg)
        sub.join(30)
    finally:
        ctx.term()
    got = sub.events()
    assert stats.dropped_before_snapshot == 6 and stats.events == 9 == len(got)
    assert got[0]["action"] == ACTION_CLEAR


def test_bad_arguments():
    with pytest.raises(ValueError, match="speed"):
        Replayer("inproc://x", speed=-1)
    with pytest.raises(ValueError, match="batch"):
        Replayer("inproc://x", batch=0)


@given(
    st.lists(st.tuples(st.integers(1, 6), st.integers(0, 2), st.integers(0, 3)), max_size=40),
    st.integers(1, 10),
    st.booleans(),
)
def test_message_cuts_properties(groups, max_events, last_partial):
    """groups: (size, instrument, ts step); cuts end whole groups of one instrument, at most
    ``max_events`` long unless a single group is longer; with a span limit, within it."""
    sizes = [g[0] for g in groups]
    ev = np.zeros(sum(sizes), EVENT_DTYPE)
    ends = np.cumsum(sizes)
    pos = 0
    t = 0
    for (_, inst, step), end in zip(groups, ends, strict=True):
        t += step
        ev["instrument"][pos:end] = inst
        ev["ts_event"][pos:end] = t
        ev["flags"][end - 1] = FLAG_LAST
        pos = end
    if last_partial and len(ev):
        ev["flags"][-1] = 0
    for span in (np.iinfo(np.int64).max, 0, 2):
        cuts = message_cuts(ev, max_events, span)
        if len(ev) == 0:
            assert len(cuts) == 0
            continue
        assert cuts[-1] == len(ev)
        starts = np.r_[0, cuts[:-1]]
        assert (cuts > starts).all()
        boundaries = set(ends.tolist()) | {len(ev)}
        for a, b in zip(starts, cuts, strict=True):
            assert (ev["instrument"][a:b] == ev["instrument"][a]).all()
            whole = b in boundaries
            assert whole or ev["instrument"][b] != ev["instrument"][b - 1]
            n_groups = len([e for e in boundaries if a < e <= b])
            assert b - a <= max_events or n_groups <= 1
            if n_groups > 1:
                assert ev["ts_event"][b - 1] - ev["ts_event"][a] <= span


@given(
    st.lists(
        st.lists(st.tuples(st.integers(1, 4), st.integers(0, 3)), min_size=0, max_size=15),
        min_size=1,
        max_size=4,
    ),
    st.integers(1, 7),
)
def test_merge_by_time_properties(sources, batch):
    """sources: per source, groups of (size, ts step); merged output keeps every event once,
    each source's order, whole groups, and group start times in order."""
    arrays = []
    for s_id, groups in enumerate(sources):
        sizes = [g[0] for g in groups]
        ev = np.zeros(sum(sizes), EVENT_DTYPE)
        ev["instrument"] = s_id
        ev["seq"] = np.arange(len(ev))
        t, pos = 0, 0
        for size, step in groups:
            t += step
            ev["ts_event"][pos : pos + size] = t
            ev["flags"][pos + size - 1] = FLAG_LAST
            pos += size
        arrays.append(ev)
    splits = [[a[i : i + batch] for i in range(0, len(a), batch)] for a in arrays]
    out = list(merge_by_time(splits))
    merged = np.concatenate(out) if out else np.empty(0, EVENT_DTYPE)
    assert len(merged) == sum(len(a) for a in arrays)
    if len(merged) == 0:
        return
    for s_id, a in enumerate(arrays):
        mine = merged[merged["instrument"] == s_id]
        assert (mine["seq"] == a["seq"]).all()
    # groups contiguous: an instrument changes only after a LAST event
    change = np.flatnonzero(merged["instrument"][1:] != merged["instrument"][:-1])
    assert (merged["flags"][change] & FLAG_LAST).all()
    starts = np.r_[0, change + 1]
    assert (np.diff(merged["ts_event"][starts]) >= 0).all()


def test_cli_merge_two_instruments(data_dir, tmp_path):
    reg = Registry()
    a = stream(20, instruments=(0,), gap_ns=1000)
    b = stream(20, instruments=(0,), gap_ns=1500)
    b["ts_event"] += 500
    for sym, ev in (("A", a), ("B", b)):
        reg.add(sym, "0.01")
        ev["instrument"] = reg.by_symbol(sym).id
        with ParquetWriter(tmp_path / sym, reg) as w:
            w.write(ev)
    ep = f"ipc://{tmp_path}/m.sock"
    ctx = zmq.Context()
    try:
        sub = Counter(ctx, ep, 120)
        sub.start()
        res = CliRunner().invoke(main, ["replay", str(tmp_path / "A"), str(tmp_path / "B"),
                                        "--to", ep, "--speed", "0", "--merge", "--batch", "6",
                                        "--subscribers", "1", "--wait", "10", "--json"])  # fmt: skip
        sub.join(30)
    finally:
        ctx.term()
    assert res.exit_code == 0, res.output
    got = sub.events()
    assert len(got) == 120 and sub.symbols == {"A", "B"}
    assert (np.diff(got["ts_event"][got["flags"] & FLAG_LAST != 0]) >= 0).all()
