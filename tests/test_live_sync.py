"""The live sync layer on the real Binance recordings, without sockets: the Binance reader's
parser and state machine fed message by message, resyncs from snapshots made by the loopback
exchange's reference book, recording order, malformed messages.

Helpers here (``book_states``, ``assert_live_matches``) are shared with
``tests/test_live_binance.py``.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from lobstream.kernels import book as B
from lobstream.kernels.dtypes import (
    ACTION_CLEAR,
    ACTION_TRADE,
    EVENT_DTYPE,
    FLAG_LAST,
    SIDE_ASK,
    SIDE_BID,
)
from lobstream.kernels.registry import Registry
from lobstream.live.loopback import ReferenceBook, load_recording
from lobstream.live.sync import BinanceSync
from lobstream.replay.readers import binance

WIDE = 1 << 17  # ticks: the 1,000-level snapshots fit without dropping levels
TOP = 10
# (market, file, symbol, tick) of the recordings in shared/data/binance_hftbacktest
RECORDINGS = {
    "spot": ("spot", "spot/btcusdt_20240808.gz", "BTCUSDT", "0.01"),
    "usdm": ("usdm", "usdm/btcusdt_20240808.gz", "BTCUSDT", "0.1"),
    "coinm": ("coinm", "cm/btcusd_perp_20240808.gz", "BTCUSD_PERP", "0.1"),
}


def recording(data_dir: Path, name: str) -> Path:
    return data_dir / "binance_hftbacktest" / RECORDINGS[name][1]


# --- book states: the top-10 book after every LAST group -----------------------------------


def book_states(events: np.ndarray) -> list[list[tuple]]:
    """Segments of top-10 states (a tuple of both sides' (price, size) levels) of a one-
    instrument stream: a segment starts at each snapshot and ends before the next one or
    before a sequence gap (the book is stale until the next snapshot)."""
    ev = events[events["action"] != ACTION_TRADE]
    bk = B.new_book(1, WIDE)
    rep = B.new_report()
    ends = np.flatnonzero(ev["flags"] & FLAG_LAST) + 1
    segments: list[list[tuple]] = []
    start = 0
    prev_seq = 0
    live = False
    for end in ends.tolist():
        group = ev[start:end]
        start = end
        first_seq = int(group["seq"][0])
        if group["action"][0] == ACTION_CLEAR:
            segments.append([])
            live = True
        elif prev_seq and first_seq != prev_seq + 1:
            live = False
        prev_seq = int(group["seq"][-1])
        B.apply_events(bk, group, rep)
        if live and not bk.stale[0]:
            segments[-1].append((_top(bk, SIDE_BID), _top(bk, SIDE_ASK)))
    return [s for s in segments if s]


def _top(bk, side: int, near: int = 512) -> tuple:
    """``B.levels(bk, 0, side, TOP)``, looking near the touch first (the ladder is wide)."""
    touch = int(bk.best_bid[0] if side == SIDE_BID else bk.best_ask[0])
    if touch < 0:
        return ()
    ladder = bk.bid[0] if side == SIDE_BID else bk.ask[0]
    lo, hi = (max(0, touch - near), touch + 1) if side == SIDE_BID else (touch, touch + near)
    slots = np.flatnonzero(ladder[lo:hi] > 0) + lo
    if len(slots) < TOP:
        return tuple(B.levels(bk, 0, side, TOP))
    slots = slots[::-1][:TOP] if side == SIDE_BID else slots[:TOP]
    base = int(bk.base[0])
    return tuple((base + int(k), float(ladder[k])) for k in slots)


@functools.lru_cache(maxsize=4)
def reader_states(path: Path) -> list[tuple]:
    """The Binance reader's top-10 states over ``path`` (one snapshot, no gaps: one run)."""
    ev = np.concatenate(list(binance.read(path, Registry())))
    segs = book_states(ev)
    assert len(segs) == 1
    return segs[0]


def assert_live_matches(live_events: np.ndarray, ref: list[tuple], *, to_end: bool = True) -> int:
    """Every live segment (after each snapshot, up to the next break) is a contiguous run of
    the reader's states, and the last one runs to the reader's end (nothing lost); returns
    the number of segments.

    Repeated states are compared once: on futures the first diff after a snapshot may be one
    the snapshot already holds (Binance's rule keeps the diff with ``U <= lastUpdateId <=
    u``), and applying it again repeats the state."""
    segs = [_dedup(s) for s in book_states(live_events)]
    ref = _dedup(ref)
    assert segs, "the live path published no book"
    index: dict[tuple, list[int]] = {}
    for j, s in enumerate(ref):
        index.setdefault(s, []).append(j)
    for k, seg in enumerate(segs):
        starts = [j for j in index.get(seg[0], []) if ref[j : j + len(seg)] == seg]
        assert starts, (
            f"segment {k} of {len(segs)} ({len(seg)} states) is not a run of the reader's "
            f"{len(ref)} states"
        )
        if to_end and k == len(segs) - 1:
            assert any(j + len(seg) == len(ref) for j in starts), (
                "the last segment does not reach the reader's last state: something was lost"
            )
    return len(segs)


def _dedup(states: list[tuple]) -> list[tuple]:
    return [s for k, s in enumerate(states) if k == 0 or s != states[k - 1]]


# --- feeding the sync layer -----------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _lines(path: Path) -> list[tuple]:
    """The recording's messages (``load_recording``; read once per file)."""
    return load_recording([path])


def _feed_all(
    sync: BinanceSync,
    sym: str,
    path: Path,
    *,
    drop=(),
    snapshot_at=(),
    stale_lag=0,
    chunk: int = 32,
):
    """Feed the recording to ``sync`` in chunks of up to ``chunk`` messages (as the connector
    does under load); diffs whose index (0-based, counting depth diffs after the recorded
    snapshot) is in ``drop`` are not fed; after the diff index in ``snapshot_at`` a snapshot of
    the reference book (``stale_lag`` diffs old for the first one, when given) is fed.
    Returns (events, recorded lines)."""
    futures = sync.market != "spot"
    ref = ReferenceBook(futures)
    lag = ReferenceBook(futures)
    history: list[dict] = []
    evs, lines = [], []
    batch: list[tuple[int, bytes]] = []

    def take(out):
        evs.append(out.events)
        lines.extend(out.lines)

    def flush():
        if batch:
            take(sync.feed(batch))
            batch.clear()

    n = -1
    for ts, raw, data in _lines(path):
        if data is not None and "lastUpdateId" in data:
            ref.snapshot(data)
            lag.snapshot(data)
            flush()
            take(sync.snapshot(sym, ts, raw))
            n = 0
            continue
        if data is not None:
            ref.diff(data)
            history.append(data)
            if stale_lag and len(history) > stale_lag:
                lag.diff(history[-stale_lag - 1])
        if not (data is not None and n >= 0 and n in drop):
            batch.append((ts, raw))
        if len(batch) >= chunk:
            flush()
        if data is not None and n >= 0:
            if n in snapshot_at:
                flush()
                book = lag if stale_lag and n == snapshot_at[0] else ref
                take(sync.snapshot(sym, ts, book.body()))
            n += 1
    flush()
    return np.concatenate(evs) if evs else np.zeros(0, EVENT_DTYPE), lines


def _read_back(tmp_path: Path, sym: str, lines) -> np.ndarray:
    f = tmp_path / f"{sym.lower()}_20240808.000000.gz"
    with gzip.open(f, "wb", compresslevel=1) as fh:
        fh.write(b"".join(line + b"\n" for _, line in lines))
    return np.concatenate(list(binance.read(f, Registry())))


def test_no_fault_equals_reader_events(data_dir, tmp_path):
    market, _, sym, tick = RECORDINGS["spot"]
    path = recording(data_dir, "spot")
    sync = BinanceSync(market, [sym], Registry(), {sym: tick})
    ev, lines = _feed_all(sync, sym, path)
    expected = np.concatenate(list(binance.read(path, Registry())))
    np.testing.assert_array_equal(ev, expected)
    assert sync.state(sym) == "live" and not sync.defects
    np.testing.assert_array_equal(_read_back(tmp_path, sym, lines), ev)


@pytest.mark.parametrize("name", ["spot", "usdm"])
def test_gap_holds_diffs_then_resyncs(data_dir, tmp_path, name):
    market, _, sym, tick = RECORDINGS[name]
    path = recording(data_dir, name)
    sync = BinanceSync(market, [sym], Registry(), {sym: tick})
    # diff 300 lost; the exchange's snapshot comes after diff 305 (the held ones straddle it)
    ev, lines = _feed_all(sync, sym, path, drop={300}, snapshot_at=(305,))
    assert sync.chains[sym].gaps == 1 and sync.state(sym) == "live"
    assert int((ev["action"] == ACTION_CLEAR).sum()) == 2
    assert assert_live_matches(ev, reader_states(path)) == 2
    # the recording, in consumption order, reads back as exactly what was published
    np.testing.assert_array_equal(_read_back(tmp_path, sym, lines), ev)


def test_stale_snapshot_is_refused_then_resynced(data_dir, tmp_path):
    market, _, sym, tick = RECORDINGS["spot"]
    path = recording(data_dir, "spot")
    sync = BinanceSync(market, [sym], Registry(), {sym: tick})
    # after the gap at 200: first a snapshot 10 diffs old (before the held diffs), then a fresh one
    ev, lines = _feed_all(sync, sym, path, drop={200}, snapshot_at=(204, 206), stale_lag=10)
    assert sync.chains[sym].gaps == 2  # the stream's break, and the stale snapshot's
    assert sync.state(sym) == "live"
    assert_live_matches(ev, reader_states(path))
    np.testing.assert_array_equal(_read_back(tmp_path, sym, lines), ev)


def test_malformed_messages_counted_skipped_not_recorded(data_dir, tmp_path):
    market, _, sym, tick = RECORDINGS["spot"]
    path = recording(data_dir, "spot")
    sync = BinanceSync(market, [sym], Registry(), {sym: tick})
    ev, lines = _feed_all(sync, sym, path)
    n_lines = len(lines)
    trade = json.dumps(
        {"stream": "btcusdt@trade", "data": {"e": "trade", "s": "BTCUSDT", "T": 1, "p": "1.00",
                                              "q": "1", "m": "yes"}}
    ).encode()  # fmt: skip
    bad_price = json.dumps(
        {"stream": "btcusdt@depth@100ms",
         "data": {"e": "depthUpdate", "E": 1, "s": "BTCUSDT", "U": 10**12, "u": 10**12 + 1,
                  "b": [["abc", "1.0"]], "a": []}}
    ).encode()  # fmt: skip
    garbage = [
        (1, b'{"stream":"btcusdt@depth@100ms","data":{'),  # cut short
        (2, b"[1, 2]"),  # not an object
        (3, b'{"stream":"ethusdt@trade","data":{}}'),  # a stream we did not subscribe to
        (4, trade),  # m not a boolean
        (5, bad_price),
        (6, b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","s":"BTCUSDT"}}'),
    ]
    out = sync.feed(garbage)
    assert len(out.events) == 0 and out.lines == [] and not out.gaps
    assert dict(sync.defects) == {
        "bad_json": 1,
        "unknown_stream": 2,
        "bad_side": 1,
        "bad_price": 1,
        "bad_record": 1,
    }
    assert len(lines) == n_lines and sync.state(sym) == "live"


def test_forced_resync_holds_until_snapshot(data_dir):
    market, _, sym, tick = RECORDINGS["usdm"]
    path = recording(data_dir, "usdm")
    sync = BinanceSync(market, [sym], Registry(), {sym: tick})
    msgs = _lines(path)
    snap = next(i for i, m in enumerate(msgs) if m[2] is not None and "lastUpdateId" in m[2])
    ref = ReferenceBook(futures=True)
    for i, (ts, raw, data) in enumerate(msgs[: snap + 200]):
        if i == snap:
            sync.snapshot(sym, ts, raw)
        else:
            sync.feed([(ts, raw)])
        if data is not None:
            (ref.snapshot if "lastUpdateId" in data else ref.diff)(data)
    assert sync.force_resync(sym) and not sync.force_resync(sym)
    held = [m for m in msgs[snap + 200 : snap + 230]]
    out = sync.feed([(ts, raw) for ts, raw, _ in held])
    assert sync.held(sym) > 0 and out.want_snapshot == [sym] and out.lines
    assert all(b"depthUpdate" not in line for _, line in out.lines)  # held: recorded later
    for _, _, data in held:
        if data is not None:
            ref.diff(data)
    out = sync.snapshot(sym, 1, ref.body())
    assert sync.state(sym) == "live" and sync.held(sym) == 0 and not out.gaps
    assert out.events["action"][0] == ACTION_CLEAR
    assert b"lastUpdateId" in out.lines[0][1]
    assert sum(b"depthUpdate" in line for _, line in out.lines) > 0


def test_spot_snapshot_before_any_trade_has_a_time(data_dir):
    """A spot REST snapshot carries no time: before any stamped message its chain has none to
    lend it, and it takes its receipt time (the recording's line says the same)."""
    market, _, sym, tick = RECORDINGS["spot"]
    lines = load_recording([recording(data_dir, "spot")])
    k = next(i for i, (_, _, d) in enumerate(lines) if d is not None and "lastUpdateId" in d)
    diff = next(x for x in lines[k + 1 :] if x[2] is not None)  # the first diff after it
    sync = BinanceSync(market, [sym], Registry(), {sym: tick})
    assert len(sync.feed([(diff[0], diff[1])]).events) == 0  # held for a snapshot
    out = sync.snapshot(sym, lines[k][0], lines[k][1])
    assert out.events["action"][0] == ACTION_CLEAR
    assert out.events["ts_event"][0] > 0
