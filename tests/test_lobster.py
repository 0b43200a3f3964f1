"""LOBSTER reader: the rebuilt book equals the orderbook file at every row, on every real
sample and on generated files; exact timestamps; validation errors name file and row."""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lobstream.kernels import book as kbook
from lobstream.kernels.dtypes import (
    ACTION_CLEAR,
    ACTION_TRADE,
    EVENT_DTYPE,
    FLAG_LAST,
    FLAG_SNAPSHOT,
    ROW_META_DTYPE,
    SIDE_ASK,
    SIDE_BID,
)
from lobstream.kernels.features import events_to_rows, raw_spec
from lobstream.kernels.registry import Registry
from lobstream.replay.errors import DataError, Defects
from lobstream.replay.readers import lobster, reader_for

REAL = [
    "GOOG_2012-06-21_34200000_57600000_message_10.csv.gz",
    "GOOG_2012-06-21_34200000_57600000_message_5.csv.gz",
    "GOOG_2012-06-21_34200000_57600000_message_1.csv.gz",
    "AAPL_2012-06-21_34200000_57600000_message_1.csv.gz",
    "truncated_first999/AAPL_2012-06-21_34200000_57600000_message_10.csv",
]
DAY = "2012-06-21"
MIDNIGHT_NY_NS = 1_340_251_200 * 10**9  # 2012-06-21 00:00 EDT in UTC ns


@functools.lru_cache(maxsize=2)
def read_real(path: Path) -> np.ndarray:
    """A real sample's events, read once per test session (callers must not modify them)."""
    return read_all(path)


def read_all(path, registry=None, **kw) -> np.ndarray:
    batches = list(lobster.read(path, registry or Registry(), **kw))
    return np.concatenate(batches) if batches else np.empty(0, EVENT_DTYPE)


def same_events(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-equal in every field (padding bytes are not data: numpy copies skip them)."""
    return len(a) == len(b) and all(
        np.ascontiguousarray(a[f]).tobytes() == np.ascontiguousarray(b[f]).tobytes()
        for f in EVENT_DTYPE.names
    )


def rows_with_events(msg_types: np.ndarray, ob: np.ndarray) -> np.ndarray:
    """Rows that must end with a LAST event: the first, trades, and visible-book changes."""
    changed = np.ones(len(ob), bool)
    changed[1:] = (ob[1:] != ob[:-1]).any(1)
    return changed | np.isin(msg_types, (4, 5, 6))


# --- every real sample ---------------------------------------------------------------------


def test_every_sample_listed(data_dir):
    found = {
        str(p.relative_to(data_dir / "lobster"))
        for p in (data_dir / "lobster").rglob("*_message_*.csv*")
    }
    assert found == set(REAL)


@pytest.mark.parametrize("name", REAL)
def test_real_book_equals_orderbook_every_row(data_dir, name):
    msg_path, ob_path = lobster.pair_paths(data_dir / "lobster" / name)
    n_lev = lobster.parse_name(msg_path).levels
    ob = pl.read_csv(ob_path, has_header=False).to_numpy().astype(np.int64)
    msg = pl.read_csv(
        msg_path,
        has_header=False,
        infer_schema=False,
        new_columns=["time", "type", "id", "size", "price", "dir"],
    )
    events = read_real(msg_path)
    assert (np.diff(events["seq"].astype(np.int64)) == 1).all()
    assert events[0]["action"] == ACTION_CLEAR and events[0]["flags"] & FLAG_SNAPSHOT
    assert (np.diff(events["ts_event"]) >= 0).all()

    want = rows_with_events(msg["type"].cast(pl.Int64).to_numpy(), ob)
    assert int((events["flags"] & FLAG_LAST != 0).sum()) == int(want.sum())
    expected = ob[want].astype(np.float64)
    expected[:, 0::2] /= 100  # USD x 10000 -> ticks of 0.01 (price columns are even)

    # Wide enough for the deepest sample (GOOG 10 levels spans ~19 USD at the open).
    book = kbook.new_book(1, width=1 << 14)
    rows = np.empty((len(expected) + 1, 4 * n_lev), np.float32)
    meta = np.empty(len(rows), ROW_META_DTYPE)
    report = kbook.new_report()
    n = events_to_rows(book, raw_spec(n_lev), events, rows, meta, report)
    assert report[0].sum() == 0, report
    assert n == len(expected)
    np.testing.assert_array_equal(rows[:n], expected.astype(np.float32))


def test_trades_and_timestamps_goog(data_dir):
    ev = read_real(lobster.pair_paths(data_dir / "lobster" / REAL[0])[0])
    trades = ev[ev["action"] == ACTION_TRADE]
    assert len(trades) == 7765 + 3913  # visible + hidden executions (data README)
    # First message: 34200.015105074,4,15818974,4,5794000,1 -> a sell aggressor at 579.40.
    t0 = trades[0]
    assert t0["ts_event"] == MIDNIGHT_NY_NS + 34200_015105074
    assert (t0["price"], t0["size"], t0["side"]) == (57940, 4.0, SIDE_ASK)


def test_partner_from_either_file(data_dir):
    name = REAL[-1]
    a = read_all(data_dir / "lobster" / name)
    b = read_all(data_dir / "lobster" / name.replace("message", "orderbook"))
    assert same_events(a, b)
    assert reader_for(data_dir / "lobster" / name).FORMAT == "lobster"


def test_small_batches_equal_one_batch(data_dir):
    path = data_dir / "lobster" / REAL[-1]
    whole = read_all(path)
    parts = list(lobster.read(path, Registry(), batch_rows=50, chunk_rows=7))
    assert max(len(p) for p in parts) <= 50 and len(parts) > 10
    assert same_events(np.concatenate(parts), whole)
    for p in parts:  # batches end at a row boundary
        assert p[-1]["flags"] & FLAG_LAST


# --- generated files: hidden levels, dummies, halts ----------------------------------------


def write_pair(
    folder: Path, messages, books, levels: int, symbol="TEST", gz=False, trailing_newline=True
) -> Path:
    """Write a LOBSTER pair; ``books`` rows are (asks, bids) lists of (price, size) best first."""
    rows = []
    for asks, bids in books:
        cells = []
        for j in range(levels):
            ap, asz = asks[j] if j < len(asks) else (lobster.DUMMY_ASK, 0)
            bp, bsz = bids[j] if j < len(bids) else (lobster.DUMMY_BID, 0)
            cells += [ap, asz, bp, bsz]
        rows.append(",".join(str(c) for c in cells))
    base = f"{symbol}_{DAY}_34200000_57600000_{{}}_{levels}.csv" + (".gz" if gz else "")
    end = "\n" if trailing_newline else ""
    for kind, lines in (
        ("message", [",".join(map(str, m)) for m in messages]),
        ("orderbook", rows),
    ):
        data = ("\n".join(lines) + end).encode()
        path = folder / base.format(kind)
        path.write_bytes(gzip.compress(data) if gz else data)
    return folder / base.format("message")


def rebuild_and_compare(events: np.ndarray, books, levels: int, messages) -> None:
    """Apply the events row by row with the book kernel; compare with each row's top N."""
    book = kbook.new_book(1)
    report = kbook.new_report()
    last = np.flatnonzero(events["flags"] & FLAG_LAST)
    ends = iter(last + 1)
    start = 0
    prev = None
    for i, ((asks, bids), msg) in enumerate(zip(books, messages, strict=True)):
        view = (
            [(p // 100, s) for p, s in asks[:levels]],
            [(p // 100, s) for p, s in bids[:levels]],
        )
        if i == 0 or view != prev or msg[1] in (4, 5, 6):
            end = next(ends)
            kbook.apply_events(book, events[start:end], report)
            start = end
        assert kbook.levels(book, 0, SIDE_ASK, levels) == [(p, float(s)) for p, s in view[0]], i
        assert kbook.levels(book, 0, SIDE_BID, levels) == [(p, float(s)) for p, s in view[1]], i
        prev = view
    assert start == len(events) and next(ends, None) is None
    assert report[0].sum() == 0, report


@st.composite
def evolving_books(draw):
    """A full book (up to 8 levels a side, prices on a 100-unit grid) changed one level per
    row by adds, deletes at any depth and size changes; some rows are trades or halts."""
    n_rows = draw(st.integers(1, 30))
    asks = {10_000 + 100 * k: draw(st.integers(1, 9)) for k in range(draw(st.integers(0, 6)))}
    bids = {9_900 - 100 * k: draw(st.integers(1, 9)) for k in range(draw(st.integers(0, 6)))}
    books, messages = [], []
    t = 34200.0
    for _ in range(n_rows):
        side = draw(st.sampled_from([asks, bids]))
        op = draw(st.sampled_from(["add", "delete", "size", "trade", "halt"]))
        sign = 1 if side is asks else -1
        mtype, price, size = 1, 10_000, 1
        if op == "add":
            ref = 10_000 if side is asks else 9_900
            price = ref + sign * 100 * draw(st.integers(-2, 9))
            other = bids if side is asks else asks
            if price > 0 and not (
                other and (price <= max(other) if side is asks else price >= min(other))
            ):
                side[price] = draw(st.integers(1, 9))
        elif op in ("delete", "size", "trade") and side:
            price = draw(st.sampled_from(sorted(side)))
            mtype = 3 if op == "delete" else (4 if op == "trade" else 2)
            if op == "size":
                side[price] = draw(st.integers(1, 9))
            else:
                del side[price]
        elif op == "halt":
            mtype, price = 7, draw(st.sampled_from([-1, 0, 1]))
        t += draw(st.sampled_from([0.0, 0.001, 0.5]))
        messages.append((f"{t:.9f}", mtype, 1, size, price, -sign))
        books.append(
            (
                [(p, asks[p]) for p in sorted(asks)],
                [(p, bids[p]) for p in sorted(bids, reverse=True)],
            )
        )
    return messages, books


@settings(max_examples=30)
@given(evolving_books(), st.integers(1, 4), st.booleans())
def test_generated_book_equals_topn_every_row(tmp_path_factory, case, levels, gz):
    messages, books = case
    folder = tmp_path_factory.mktemp("lob")
    path = write_pair(folder, messages, books, levels, gz=gz, trailing_newline=gz)
    events = read_all(path, hidden_capacity=2, chunk_rows=5)
    rebuild_and_compare(events, books, levels, messages)


def test_dummy_levels_and_halts(tmp_path):
    # An empty ask side (dummy levels), a halt that repeats the book, the ask deleted again.
    books = [
        ([], [(9_900, 5)]),
        ([(10_000, 3)], [(9_900, 5)]),
        ([(10_000, 3)], [(9_900, 5)]),
        ([], [(9_900, 5)]),
    ]
    messages = [
        ("34200.1", 1, 1, 5, 9_900, 1),
        ("34200.2", 1, 2, 3, 10_000, -1),
        ("34200.3", 7, 0, 0, -1, -1),
        ("34201", 3, 2, 3, 10_000, -1),
    ]
    path = write_pair(tmp_path, messages, books, 2)
    events = read_all(path)
    rebuild_and_compare(events, books, 2, messages)
    assert (events["ts_event"][-1] - MIDNIGHT_NY_NS) == 34201 * 10**9


def test_exact_time_parsing(tmp_path):
    times = ["34200.1", "34200.123456789", "43002.632812672004", "43002.6328126715", "43003"]
    messages = [(t, 1, 1, 1, 10_000, -1) for t in times]
    books = [([(10_000, i + 1)], [(9_900, 1)]) for i in range(len(times))]
    events = read_all(write_pair(tmp_path, messages, books, 1))
    last = events[events["flags"] & FLAG_LAST != 0]["ts_event"] - MIDNIGHT_NY_NS
    assert last.tolist() == [
        34200_100000000,
        34200_123456789,
        43002_632812672,
        43002_632812672,
        43003_000000000,
    ]


def test_hidden_execution_between_ticks_is_rounded(tmp_path):
    messages = [("34200.1", 1, 1, 1, 10_000, -1), ("34200.2", 5, 0, 7, 9_950, 1)]
    books = [([(10_000, 1)], [(9_900, 1)])] * 2
    events = read_all(write_pair(tmp_path, messages, books, 1))
    trade = events[events["action"] == ACTION_TRADE][0]
    assert (trade["price"], trade["size"], trade["side"]) == (100, 7.0, SIDE_ASK)


# --- bad input -----------------------------------------------------------------------------

GOOD_MSG = [
    ("34200.1", 1, 1, 1, 10_000, -1),
    ("34200.2", 1, 2, 1, 9_900, 1),
    ("34200.3", 1, 3, 2, 10_000, -1),
]
GOOD_BOOKS = [([(10_000, 1)], []), ([(10_000, 1)], [(9_900, 1)]), ([(10_000, 3)], [(9_900, 1)])]


@pytest.mark.parametrize(
    ("row", "msg", "book", "kind", "needle", "which"),
    [
        (2, ("34200.05", 1, 2, 1, 9_900, 1), None, "time_backwards", "backwards", "message"),
        (2, ("34200.2", 9, 2, 1, 9_900, 1), None, "bad_type", "type 9", "message"),
        (2, ("34200.2", 1, 2, 1, 9_900, 0), None, "bad_direction", "direction 0", "message"),
        (2, ("34200.2", 1, 2, 1, -5, 1), None, "non_positive_price", "not positive", "message"),
        (2, ("34200.2", 1, 2, -1, 9_900, 1), None, "negative_size", "negative", "message"),
        (2, ("34200.2", 1, 2, 1, 9_900), None, "column_count", "columns", "message"),
        (2, ("34200.x", 1, 2, 1, 9_900, 1), None, "bad_field", "not a number", "message"),
        (2, None, ([(10_050, 1)], [(9_900, 1)]), "off_grid_price", "tick", "orderbook"),
        (2, None, ([(10_000, -1)], [(9_900, 1)]), "negative_size", "size", "orderbook"),
        (
            2,
            None,
            ([(10_000, 1), (9_000, 1)], [(9_900, 1)]),
            "unordered_levels",
            "best-first",
            "orderbook",
        ),
    ],
)
def test_bad_rows_raise_or_skip(tmp_path, row, msg, book, kind, needle, which):
    messages, books = list(GOOD_MSG), list(GOOD_BOOKS)
    if msg is not None:
        messages[row - 1] = msg
    if book is not None:
        books[row - 1] = book
    path = write_pair(tmp_path, messages, books, 2)
    with pytest.raises(DataError) as err:
        read_all(path)
    assert err.value.row == row and which in Path(err.value.path).name
    assert needle in str(err.value)
    defects = Defects()
    events = read_all(path, skip_bad=True, defects=defects)
    assert defects[kind] == 1 and sum(defects.values()) == 1
    assert int((events["flags"] & FLAG_LAST != 0).sum()) == 2


def test_row_count_mismatch(tmp_path):
    path = write_pair(tmp_path, GOOD_MSG, GOOD_BOOKS, 1)
    ob = path.with_name(path.name.replace("message", "orderbook"))
    ob.write_text("\n".join(ob.read_text().splitlines()[:2]) + "\n")
    with pytest.raises(DataError, match="equal rows"):
        read_all(path)
    ob.unlink()
    with pytest.raises(DataError, match="no orderbook file"):
        read_all(path)


def test_bad_name():
    assert not lobster.detect(Path("prices.csv"))
    with pytest.raises(DataError, match="LOBSTER name"):
        lobster.parse_name("prices.csv")


def test_registry_tick_size_used(tmp_path):
    reg = Registry()
    reg.add("TEST", "0.05", {"lobster": 10_000})
    path = write_pair(tmp_path, GOOD_MSG, GOOD_BOOKS, 1)
    with pytest.raises(DataError, match="multiple of the tick"):
        read_all(path, reg)  # 0.99 is not on a 0.05 grid
    reg2 = Registry()
    reg2.add("TEST", "0.0001", {"lobster": 10_000})
    ev = read_all(path, reg2)
    assert ev[ev["side"] == SIDE_BID]["price"].max() == 9_900
    assert ev["instrument"].max() == 0 and SIDE_BID == 0


def test_truncated_gzip_is_a_data_error(tmp_path):
    path = write_pair(tmp_path, GOOD_MSG, GOOD_BOOKS, 1, gz=True)
    ob = path.with_name(path.name.replace("message", "orderbook"))
    ob.write_bytes(ob.read_bytes()[:-12])  # cut inside the deflate stream's trailer
    with pytest.raises(DataError, match="cannot read"):
        read_all(path)
