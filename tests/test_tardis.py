"""Tardis CSV reader: incremental_book_L2 and book_snapshot_N, on the samples and by hand."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lobstream.kernels import book as B
from lobstream.kernels.dtypes import ACTION_CLEAR, EVENT_DTYPE, FLAG_LAST, FLAG_SNAPSHOT
from lobstream.kernels.registry import Registry
from lobstream.replay.errors import DataError, Defects
from lobstream.replay.readers import reader_for, tardis


def _read(path: Path, registry: Registry | None = None, **kw) -> np.ndarray:
    reg = Registry() if registry is None else registry
    out = list(tardis.read(path, reg, **kw))
    return np.concatenate(out) if out else np.zeros(0, EVENT_DTYPE)


@pytest.mark.parametrize("depth", [5, 25])
def test_book_snapshot_rows_equal_book_at_every_row(data_dir, depth):
    path = data_dir / "tardis" / f"binance-futures_book_snapshot_{depth}_BTCUSDT.csv"
    assert reader_for(path).FORMAT == "tardis"
    reg = Registry()
    ev = _read(path, reg)
    tick = reg.by_symbol("binance-futures:BTCUSDT").tick_size
    assert tick == Decimal("0.01")
    df = pl.read_csv(path, infer_schema_length=0)
    ends = np.flatnonzero(ev["flags"] & FLAG_LAST)
    assert len(ends) == len(df) == 10
    assert ev["action"][0] == ACTION_CLEAR
    # the first row is a full snapshot, later rows are diffs only
    assert np.all(ev["flags"][: ends[0] + 1] & FLAG_SNAPSHOT)
    assert not np.any(ev["flags"][ends[0] + 1 :] & FLAG_SNAPSHOT)
    assert np.all(np.diff(ev["seq"].astype(np.int64)) == 1)
    bk = B.new_book(1, 4096)
    rep = B.new_report()
    k = 0
    for r, end in enumerate(ends):
        B.apply_events(bk, ev[k : end + 1], rep)
        k = end + 1
        for side, name in ((0, "bids"), (1, "asks")):
            want = [
                (
                    int(Decimal(df[f"{name}[{i}].price"][r]) / tick),
                    float(df[f"{name}[{i}].amount"][r]),
                )
                for i in range(depth)
            ]
            assert B.levels(bk, 0, side, depth) == want
        assert ev["ts_event"][end] == int(df["timestamp"][r]) * 1000
    assert rep[0].sum() == 0


def test_incremental_sample(data_dir):
    path = data_dir / "tardis" / "deribit_incremental_book_L2_BTC-PERPETUAL.csv"
    assert reader_for(path).FORMAT == "tardis"
    reg = Registry()
    reg.add("deribit:BTC-PERPETUAL", "0.5")  # Deribit's real tick
    ev = _read(path, reg)
    assert len(ev) == 16 and ev["action"][0] == ACTION_CLEAR
    assert np.all(ev["flags"] & FLAG_SNAPSHOT)
    assert np.flatnonzero(ev["flags"] & FLAG_LAST).tolist() == [15]  # one timestamp: one group
    bk = B.new_book(1, 1024)
    B.apply_events(bk, ev, B.new_report())
    lv = B.levels(bk, 0, 1, 20)
    assert lv[0] == (12843, 18640.0)  # 6421.5 / 0.5
    assert len(lv) == 15


_HEAD = "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount\n"


def _inc(tmp_path: Path, rows: list[str]) -> Path:
    p = tmp_path / "inc.csv"
    p.write_text(_HEAD + "".join(f"deribit,X,{r}\n" for r in rows))
    return p


ROWS = [
    "1000,1001,true,bid,100.5,1",
    "1000,1001,true,ask,101,2",
    "2000,2001,false,bid,100.5,0",
    "2000,2001,false,bid,100,3",
    "3000,3001,false,ask,101,5",
    "4000,4001,true,bid,99,1",  # a fresh snapshot
    "4000,4001,true,ask,102,1",
]


def test_incremental_groups_and_fresh_snapshots(tmp_path):
    ev = _read(_inc(tmp_path, ROWS))
    got = [(int(e["action"]), int(e["price"]), float(e["size"]), int(e["flags"])) for e in ev]
    S, L = FLAG_SNAPSHOT, FLAG_LAST
    assert got == [
        (ACTION_CLEAR, 0, 0.0, S),
        (0, 1005, 1.0, S),
        (0, 1010, 2.0, S | L),
        (0, 1005, 0.0, 0),
        (0, 1000, 3.0, L),
        (0, 1010, 5.0, L),
        (ACTION_CLEAR, 0, 0.0, S),
        (0, 990, 1.0, S),
        (0, 1020, 1.0, S | L),
    ]
    assert ev["seq"].tolist() == list(range(1, 10))
    assert ev["ts_event"][3] == 2_000_000


def test_incremental_groups_survive_batch_boundaries(tmp_path, monkeypatch):
    path = _inc(tmp_path, ROWS)
    whole = _read(path)
    monkeypatch.setattr(tardis, "_BATCH", 3)
    assert np.array_equal(_read(path), whole)
    parts = list(tardis.read(path, Registry(), batch_rows=2))
    assert max(len(p) for p in parts) <= 2


@pytest.mark.parametrize(
    ("row", "kind", "message"),
    [
        ("2000,2001,false,bid,abc,1", "bad_price", "'abc' is not a positive decimal"),
        ("2000,2001,false,bid,-5,1", "bad_price", "not a positive decimal"),
        ("2000,2001,false,bid,100,-1", "bad_quantity", "'-1' is not a decimal >= 0"),
        ("2000,2001,false,buy,100,1", "bad_side", "side 'buy' must be bid or ask"),
        ("2000,2001,maybe,bid,100,1", "bad_record", "is_snapshot 'maybe'"),
        ("20x0,2001,false,bid,100,1", "bad_timestamp", "'20x0' is not an integer"),
    ],
)
def test_bad_rows_name_file_and_row(tmp_path, row, kind, message):
    path = _inc(tmp_path, ROWS[:2] + [row] + ROWS[4:5])
    with pytest.raises(DataError, match=rf"inc\.csv: row 4: .*{message}"):
        _read(path)
    d = Defects()
    ev = _read(path, skip_bad=True, defects=d)
    assert d[kind] == 1 and d.first[kind].endswith("row 4")
    assert len(ev) == 4  # clear, two snapshot rows, the good update


def test_bad_snapshot_row(tmp_path, data_dir):
    src = (data_dir / "tardis" / "binance-futures_book_snapshot_5_BTCUSDT.csv").read_text()
    lines = src.splitlines()
    lines[3] = lines[3].replace(",11657.54,", ",11657.5x,", 1)
    p = tmp_path / "snap5.csv"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"snap5\.csv: row 4: asks level"):
        _read(p)
    d = Defects()
    ev = _read(p, skip_bad=True, defects=d)
    assert d["bad_price"] == 1
    assert len(np.flatnonzero(ev["flags"] & FLAG_LAST)) == 9


def test_not_tardis(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    assert not tardis.detect(p)
    with pytest.raises(DataError, match="not a Tardis"):
        _read(p)
