"""Binance reader: recordings (spot, USD-M, COIN-M), depth CSVs, sync rules, bad input."""

from __future__ import annotations

import functools
import gzip
import json
import re
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lobstream.kernels import book as B
from lobstream.kernels.dtypes import (
    ACTION_CLEAR,
    ACTION_TRADE,
    CODE_CROSSED,
    CODE_SEQ_GAP,
    EVENT_DTYPE,
    FLAG_LAST,
    FLAG_SNAPSHOT,
)
from lobstream.kernels.registry import Registry
from lobstream.replay.errors import DataError, Defects
from lobstream.replay.readers import _decimal, binance, reader_for
from lobstream.replay.readers._decimal import EMPTY, NOT_NUMBER

WIDE = 1 << 17  # ticks: holds the 1,000-level snapshots without dropping levels


def _read(paths, registry=None, **kw) -> np.ndarray:
    reg = Registry() if registry is None else registry
    out = [b for p in paths for b in binance.read(Path(p), reg, **kw)]
    return np.concatenate(out) if out else np.zeros(0, EVENT_DTYPE)


def _hb(data_dir: Path, name: str) -> Path:
    return data_dir / "binance_hftbacktest" / name


# --- naive reference: the sync rules and the book, written out plainly --------------------


@functools.lru_cache(maxsize=4)
def _naive(paths: tuple, futures: bool):
    """Book dict per side at the end, and (u, best bid, best ask, has levels) after each applied
    diff message; also the bookTicker BBOs by update id (futures send ``u`` on both streams).
    """
    book = {"b": {}, "a": {}}
    synced, fresh, last_u = False, False, 0
    pending, states, tickers = [], [], {}

    def apply(d):
        nonlocal fresh, last_u
        U, u = d["U"], d["u"]
        if fresh:
            if (u < last_u) if futures else (u <= last_u):
                return
            assert (U <= last_u <= u) if futures else (U <= last_u + 1 <= u)
        else:
            if u <= last_u:
                return
            assert (d["pu"] == last_u) if futures else (U == last_u + 1)
        fresh, last_u = False, u
        for side in ("b", "a"):
            for px, q in d[side]:
                if Decimal(q) == 0:
                    book[side].pop(Decimal(px), None)
                else:
                    book[side][Decimal(px)] = float(q)
        best_b = max(book["b"]) if book["b"] else None
        best_a = min(book["a"]) if book["a"] else None
        states.append((u, best_b, best_a, bool(d["b"] or d["a"])))

    for p in paths:
        with gzip.open(p, "rt") as fh:
            for line in fh:
                obj = json.loads(line.split(" ", 1)[1])
                d = obj.get("data", obj)
                if "lastUpdateId" in d:
                    book = {
                        "b": {Decimal(px): float(q) for px, q in d["bids"]},
                        "a": {Decimal(px): float(q) for px, q in d["asks"]},
                    }
                    synced, fresh, last_u = True, True, d["lastUpdateId"]
                    for pd in pending:
                        apply(pd)
                    pending = []
                elif d.get("e") == "depthUpdate":
                    if synced:
                        apply(d)
                    else:
                        pending.append(d)
                elif d.get("e") == "bookTicker":
                    tickers[d["u"]] = (Decimal(d["b"]), Decimal(d["a"]))
    return book, states, tickers


def _book_after(ev, width=WIDE):
    bk = B.new_book(1, width)
    rep = B.new_report()
    B.apply_events(bk, ev, rep)
    return bk, rep


RECORDINGS = [
    (("spot/btcusdt_20240808.gz", "spot/btcusdt_20240809.gz"), False, Decimal("0.01")),
    (("usdm/btcusdt_20240808.gz",), True, Decimal("0.1")),
    (("cm/btcusd_perp_20240808.gz", "cm/btcusd_perp_20240809.gz"), True, Decimal("0.1")),
]


@functools.lru_cache(maxsize=3)
def _read_cached(paths: tuple) -> tuple[np.ndarray, Decimal]:
    reg = Registry()
    ev = _read(paths, reg)
    assert len(reg) == 1
    return ev, reg.by_id(0).tick_size


@pytest.mark.parametrize(("names", "futures", "tick"), RECORDINGS)
def test_recordings_chain_across_files(data_dir, names, futures, tick):
    paths = tuple(_hb(data_dir, n) for n in names)
    for p in paths:
        assert reader_for(p).FORMAT == "binance"
    ev, found_tick = _read_cached(paths)
    assert found_tick == tick
    book_ev = ev[ev["action"] != ACTION_TRADE]
    # one snapshot, then a contiguous sequence across both files (the continuation chains)
    assert int((ev["action"] == ACTION_CLEAR).sum()) == 1
    assert np.all(np.diff(book_ev["seq"].astype(np.int64)) == 1)
    assert np.all(np.diff(ev["ts_event"]) >= 0)
    assert np.all(ev["price"][ev["action"] != ACTION_CLEAR] > 0)
    assert int((ev["action"] == ACTION_TRADE).sum()) > 100
    bk, rep = _book_after(ev)
    assert rep[0, CODE_CROSSED] == 0 and rep[0, CODE_SEQ_GAP] == 0 and not bk.stale[0]


_U_RE = re.compile(r'"u":(\d+)')


def _applied_diffs(paths) -> tuple[list[int], dict[int, tuple[str, str]]]:
    """Update ids of the futures diffs the sync rules apply (those with u >= lastUpdateId, in
    file order; here no chain breaks) that carry levels, and bookTicker BBO strings by id."""
    lines = []
    for p in paths:
        with gzip.open(p, "rt") as fh:
            lines.extend(fh)
    last_id = next(
        json.loads(x.split(" ", 1)[1])["lastUpdateId"] for x in lines if "lastUpdateId" in x
    )
    diffs, tickers = [], {}
    for x in lines:
        if '"depthUpdate"' in x:
            u = int(_U_RE.search(x).group(1))
            if u >= last_id and not ('"b":[]' in x and '"a":[]' in x):
                diffs.append(u)
        elif "@bookTicker" in x:
            d = json.loads(x.split(" ", 1)[1])["data"]
            tickers[d["u"]] = (d["b"], d["a"])
    return diffs, tickers


@pytest.mark.parametrize("which", [1, 2])
def test_futures_touch_equals_exchange_book_ticker(data_dir, which):
    """Binance's bookTicker carries the update id of the book it shows: after every diff whose
    id has a bookTicker, the book built from the events has exactly that touch."""
    names, _, tick = RECORDINGS[which]
    paths = tuple(_hb(data_dir, n) for n in names)
    ev, _ = _read_cached(paths)
    diffs, tickers = _applied_diffs(paths)
    book_ev = ev[ev["action"] != ACTION_TRADE]
    ends = np.flatnonzero(book_ev["flags"] & FLAG_LAST)[1:]  # skip the snapshot's LAST
    assert len(ends) == len(diffs)
    bk = B.new_book(1, WIDE)
    rep = B.new_report()
    k = 0
    checked = 0
    for end, u in zip(ends, diffs, strict=True):
        if u not in tickers:
            continue
        B.apply_events(bk, book_ev[k : end + 1], rep)
        k = end + 1
        b, a = tickers[u]
        assert B.best_prices(bk, 0) == (int(Decimal(b) / tick), int(Decimal(a) / tick)), u
        checked += 1
    assert checked > 500


@pytest.mark.slow
@pytest.mark.parametrize(("names", "futures", "tick"), RECORDINGS)
def test_recordings_match_naive_book(data_dir, names, futures, tick):
    """The whole book against a plain-Python reading of the same files (slow: Decimal keys)."""
    paths = tuple(_hb(data_dir, n) for n in names)
    ev, _ = _read_cached(paths)
    bk, _ = _book_after(ev)
    nbook, states, _ = _naive(paths, futures)
    book_ev = ev[ev["action"] != ACTION_TRADE]
    # one LAST per applied diff message with levels, plus the snapshot's
    assert int((book_ev["flags"] & FLAG_LAST).sum()) == 1 + sum(1 for s in states if s[3])
    want_b = sorted(((int(p / tick), q) for p, q in nbook["b"].items()), reverse=True)[:50]
    want_a = sorted((int(p / tick), q) for p, q in nbook["a"].items())[:50]
    assert B.levels(bk, 0, 0, 50) == want_b
    assert B.levels(bk, 0, 1, 50) == want_a


def test_continuation_alone_emits_trades_only(data_dir, caplog):
    ev = _read([_hb(data_dir, "spot/btcusdt_20240809.gz")])
    assert len(ev) > 0 and np.all(ev["action"] == ACTION_TRADE)
    assert "wait for a snapshot" in caplog.text


def test_batches_bounded(data_dir):
    path = _hb(data_dir, "spot/btcusdt_20240808.gz")
    whole = _read([path])
    parts = list(binance.read(path, Registry(), batch_rows=5000))
    assert max(len(p) for p in parts) <= 5000
    assert np.array_equal(np.concatenate(parts), whole)


# --- depth CSVs ------------------------------------------------------------------------------


def test_depth_csv_snapshot_then_broken_chain(data_dir):
    d = data_dir / "binance_futures_depth_csv"
    snap = _read([d / "btcusdt-depth-snap.csv"])
    assert reader_for(d / "btcusdt-depth-snap.csv").FORMAT == "binance"
    assert snap["action"][0] == ACTION_CLEAR and len(snap) == 101
    assert np.all(snap["flags"] & FLAG_SNAPSHOT) and snap["flags"][-1] & FLAG_LAST
    bk, rep = _book_after(snap)
    # the sample holds the first 100 rows of the snapshot: bids only
    assert B.best_prices(bk, 0) == (203770, None)
    assert len(B.levels(bk, 0, 0, 200)) == 100
    # alone, the update file has no snapshot: nothing for the book
    assert len(_read([d / "btcusdt-depth-update.csv"])) == 0
    # after the snapshot it does not continue the id chain (ten minutes later): a seq gap
    both = _read([d / "btcusdt-depth-snap.csv", d / "btcusdt-depth-update.csv"])
    assert len(both) == 201 and both["seq"][101] == 103
    bk, rep = _book_after(both)
    assert rep[0, CODE_SEQ_GAP] == 1 and bk.stale[0]


# --- the sync rules on hand-made recordings ------------------------------------------------


def _rec(tmp_path, lines, name="btcusdt_20240101.gz"):
    p = tmp_path / name
    with gzip.open(p, "wt") as fh:
        for i, obj in enumerate(lines):
            fh.write(
                f"{1700000000000000000 + i} {obj if isinstance(obj, str) else json.dumps(obj)}\n"
            )
    return p


def _spot(U, u, bids=(), asks=(), E=1700000000000):
    data = {
        "e": "depthUpdate",
        "E": E,
        "s": "BTCUSDT",
        "U": U,
        "u": u,
        "b": list(bids),
        "a": list(asks),
    }
    return {"stream": "btcusdt@depth@100ms", "data": data}


def _fut(U, u, pu, bids=(), asks=(), T=1700000000000):
    data = {
        "e": "depthUpdate",
        "E": T,
        "T": T,
        "s": "BTCUSDT",
        "U": U,
        "u": u,
        "pu": pu,
        "b": list(bids),
        "a": list(asks),
    }
    return {"stream": "btcusdt@depth@0ms", "data": data}


SNAP = {"lastUpdateId": 100, "bids": [["10.00", "1.0"]], "asks": [["10.05", "2.0"]]}


def test_spot_sync_rules(tmp_path):
    lines = [
        _spot(90, 95, bids=[["9.00", "1"]]),  # older than the snapshot: dropped
        _spot(96, 102, bids=[["10.01", "3"]]),  # straddles lastUpdateId+1: applied
        SNAP,
        _spot(103, 105, asks=[["10.05", "0"]], E=1700000000001),
        _spot(107, 110, asks=[["10.04", "5"]], E=1700000000002),  # U != 106: a gap
        {
            "stream": "btcusdt@trade",
            "data": {
                "e": "trade",
                "s": "BTCUSDT",
                "p": "10.03",
                "q": "0.5",
                "T": 1700000000003,
                "m": True,
                "M": True,
            },
        },
    ]
    ev = _read([_rec(tmp_path, lines)])
    got = [
        (int(e["action"]), int(e["seq"]), int(e["price"]), float(e["size"]), int(e["flags"]))
        for e in ev
    ]
    assert got == [
        (ACTION_CLEAR, 1, 0, 0.0, FLAG_SNAPSHOT),
        (0, 2, 1000, 1.0, FLAG_SNAPSHOT),
        (0, 3, 1005, 2.0, FLAG_SNAPSHOT | FLAG_LAST),
        (0, 4, 1001, 3.0, FLAG_LAST),  # the buffered straddling diff
        (0, 5, 1005, 0.0, FLAG_LAST),
        (0, 7, 1004, 5.0, FLAG_LAST),  # seq 6 skipped: the gap
        (ACTION_TRADE, 0, 1003, 0.5, 0),
    ]
    assert ev["side"][-1] == 1  # buyer is maker: a sell-initiated trade


def test_empty_snapshot_is_a_clear_with_last(tmp_path):
    ev = _read([_rec(tmp_path, [{"lastUpdateId": 5, "bids": [], "asks": []}])])
    assert ev["action"].tolist() == [ACTION_CLEAR]
    assert ev["flags"][0] == FLAG_SNAPSHOT | FLAG_LAST


def test_futures_pu_chain(tmp_path):
    snap = dict(SNAP, E=1700000000000, T=1700000000000)
    lines = [
        snap,
        _fut(95, 99, 90, bids=[["9.99", "1"]]),  # u < lastUpdateId: dropped
        _fut(98, 104, 97, bids=[["10.00", "2"]]),  # U <= 100 <= u: first applied
        _fut(105, 106, 104, asks=[["10.06", "1"]]),  # pu == previous u
        _fut(110, 111, 108, asks=[["10.07", "1"]]),  # pu != 106: gap
        {
            "stream": "btcusdt@aggTrade",
            "data": {
                "e": "aggTrade",
                "s": "BTCUSDT",
                "p": "10.06",
                "q": "2",
                "T": 1700000000001,
                "m": False,
            },
        },
    ]
    ev = _read([_rec(tmp_path, lines)])
    assert ev["seq"].tolist() == [1, 2, 3, 4, 5, 7, 0]
    assert ev["action"][-1] == ACTION_TRADE and ev["side"][-1] == 0  # buyer-initiated
    assert ev["price"][-1] == 1006 and ev["size"][-1] == 2.0
    ev = ev[:-1]
    bk, rep = _book_after(ev, 64)
    assert rep[0, CODE_SEQ_GAP] == 1 and bk.stale[0]


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_line", "kind", "message"),
    [
        ('{"stream": "btcusdt@depth@100ms", "data": {"e": "depthU', "bad_json", "not valid JSON"),
        (_spot(101, 101, bids=[["10.00", "-1"]]), "negative_quantity", "negative"),
        (_spot(101, 101, bids=[["ten", "1"]]), "bad_price", "'ten' is non_numeric"),
        (_spot(101, 101, bids=[["0", "1"]]), "non_positive_price", "not positive"),
        (_spot(101, 101, bids=[["10.00"]]), "bad_record", "price, quantity"),
        (
            {"stream": "btcusdt@depth@100ms", "data": {"e": "depthUpdate", "s": "BTCUSDT"}},
            "bad_record",
            "missing or has a malformed field",
        ),
    ],
)
def test_bad_lines_name_file_and_row(tmp_path, bad_line, kind, message):
    path = _rec(tmp_path, [SNAP, bad_line, _spot(101, 102, asks=[["10.06", "1"]])])
    with pytest.raises(DataError, match=rf"btcusdt_20240101\.gz: row 2: .*{message}"):
        _read([path])
    d = Defects()
    ev = _read([path], skip_bad=True, defects=d)
    assert d[kind] == 1 and d.first[kind].endswith("row 2")
    assert ev["price"][-1] == 1006  # the rest is read


def test_truncated_gzip(tmp_path, data_dir):
    raw = _hb(data_dir, "spot/btcusdt_20240808.gz").read_bytes()
    p = tmp_path / "btcusdt_20240808.gz"
    p.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(DataError, match="btcusdt_20240808.gz: row .*(truncated|corrupt)"):
        _read([p])
    d = Defects()
    ev = _read([p], skip_bad=True, defects=d)
    assert d["truncated_file"] == 1 and len(ev) > 0


def test_bad_csv_side(tmp_path, data_dir):
    src = (data_dir / "binance_futures_depth_csv" / "btcusdt-depth-snap.csv").read_text()
    lines = src.splitlines()
    lines[5] = lines[5].replace(",b,snap,", ",x,snap,")
    p = tmp_path / "depth.csv"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"depth\.csv: row 6: side must be 'a' or 'b'"):
        _read([p])
    d = Defects()
    assert len(_read([p], skip_bad=True, defects=d)) == 100 and d["bad_side"] == 1


# --- exact decimals -------------------------------------------------------------------------


@given(st.decimals(min_value=0, max_value=10**9, places=8, allow_nan=False))
def test_parse_fixed_is_exact(x):
    s = format(x, "f")
    v, status, _ = _decimal.parse_fixed([s, "1e5", "", "1.2.3"], 8)
    assert status.tolist() == [0, NOT_NUMBER, EMPTY, NOT_NUMBER]
    assert v[0] == int(x.scaleb(8))


# --- Hyperliquid (same recorder) --------------------------------------------------------------


def test_hyperliquid_books_equal_every_l2book(data_dir):
    path = data_dir / "hyperliquid_hftbacktest" / "btcusd_20250126.gz"
    assert reader_for(path).FORMAT == "binance"
    ev = _read([path])
    books, tids = [], set()
    with gzip.open(path, "rt") as fh:
        for line in fh:
            obj = json.loads(line.split(" ", 1)[1])
            if obj["channel"] == "l2Book":
                books.append(obj["data"]["levels"])
            else:
                tids.update(t["tid"] for t in obj["data"])
    assert int((ev["action"] == ACTION_TRADE).sum()) == len(tids)  # repeats dropped
    book_ev = ev[ev["action"] != ACTION_TRADE]
    ends = np.flatnonzero(book_ev["flags"] & FLAG_LAST)
    assert len(ends) == len(books) == int((ev["action"] == ACTION_CLEAR).sum())
    bk = B.new_book(1, 4096)
    rep = B.new_report()
    k = 0
    for (bids, asks), end in zip(books, ends, strict=True):
        B.apply_events(bk, book_ev[k : end + 1], rep)
        k = end + 1
        assert B.levels(bk, 0, 0, 20) == [(int(Decimal(x["px"])), float(x["sz"])) for x in bids]
        assert B.levels(bk, 0, 1, 20) == [(int(Decimal(x["px"])), float(x["sz"])) for x in asks]
    assert rep[0].sum() == 0
