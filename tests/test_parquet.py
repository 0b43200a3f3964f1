"""Canonical Parquet: partitioned writer, registry-free reader, bit-exact round trips."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lobstream.kernels.dtypes import EVENT_DTYPE
from lobstream.kernels.registry import Registry
from lobstream.replay.convert import convert
from lobstream.replay.errors import DataError, Defects
from lobstream.replay.readers import parquet, read_events, reader_for

AAPL999 = "lobster/truncated_first999/AAPL_2012-06-21_34200000_57600000_message_10.csv"
DAY_NS = 86_400 * 10**9


def fields_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-equal in every field (NaN payloads and -0.0 included)."""
    return len(a) == len(b) and all(
        np.ascontiguousarray(a[f]).tobytes() == np.ascontiguousarray(b[f]).tobytes()
        for f in EVENT_DTYPE.names
    )


def read_back(path, registry=None) -> np.ndarray:
    batches = list(parquet.read(path, registry or Registry()))
    return np.concatenate(batches) if batches else np.empty(0, EVENT_DTYPE)


def two_instruments() -> tuple[Registry, np.ndarray]:
    reg = Registry()
    reg.add("BTC/USDT", "0.01")
    reg.add("ESM4", "0.25")
    rng = np.random.default_rng(7)
    n = 5000
    ev = np.zeros(n, EVENT_DTYPE)
    ev["ts_event"] = 1_700_000_000 * 10**9 + np.sort(rng.integers(0, 3 * DAY_NS, n))
    ev["ts_recv"] = rng.integers(0, 2**62, n)
    ev["seq"] = np.arange(1, n + 1, dtype=np.uint64) + np.uint64(2**63)
    ev["price"] = rng.integers(1, 2**40, n)
    ev["size"] = rng.random(n) * 1e6
    ev["instrument"] = rng.integers(0, 2, n)
    ev["side"] = rng.integers(0, 2, n)
    ev["action"] = rng.integers(0, 3, n)
    ev["flags"] = rng.integers(0, 4, n)
    return reg, ev


def test_partitioned_round_trip_is_bit_exact(tmp_path):
    reg, ev = two_instruments()
    with parquet.ParquetWriter(tmp_path, reg, rows_per_file=700) as w:
        for a in range(0, len(ev), 1234):
            w.write(ev[a : a + 1234])
    dirs = sorted({p.parent.relative_to(tmp_path).as_posix() for p in w.written})
    assert dirs[0].startswith("instrument=BTC%2FUSDT/date=2023-11-14")
    assert {d.split("/")[0] for d in dirs} == {"instrument=BTC%2FUSDT", "instrument=ESM4"}
    assert sum(w.written.values()) == len(ev) and max(w.written.values()) <= 700
    got = read_back(tmp_path)  # a fresh registry: ids assigned in the same order
    # One instrument after the other, each in time order.
    want = np.concatenate([ev[ev["instrument"] == i] for i in (0, 1)])
    assert fields_equal(got, want)


def test_part_file_alone_carries_symbol_and_tick(tmp_path):
    reg, ev = two_instruments()
    with parquet.ParquetWriter(tmp_path, reg) as w:
        w.write(ev)
    part = sorted(p for p in w.written if "ESM4" in str(p))[0]
    assert reader_for(part).FORMAT == "parquet" and parquet.detect(tmp_path)
    fresh = Registry()
    fresh.add("OTHER", "1")
    got = read_back(part, fresh)
    assert fresh.by_symbol("ESM4").tick_size == Decimal("0.25")
    assert (got["instrument"] == fresh.by_symbol("ESM4").id).all()
    with pytest.raises(ValueError, match="tick_size"):
        clash = Registry()
        clash.add("ESM4", "0.5")
        read_back(part, clash)


def test_parts_are_appended_not_overwritten(tmp_path):
    reg, ev = two_instruments()
    for _ in range(2):
        with parquet.ParquetWriter(tmp_path, reg) as w:
            w.write(ev)
    assert len(read_back(tmp_path)) == 2 * len(ev)


def test_convert_lobster_round_trip(data_dir, tmp_path):
    reg = Registry()
    src = list(read_events([data_dir / AAPL999], Registry()))
    seen = []
    summary = convert([data_dir / AAPL999], tmp_path, reg, progress=lambda p, n: seen.append(n))
    assert summary.events == sum(len(b) for b in src) == sum(summary.written.values())
    assert seen[-1] == summary.events
    assert [p.parent.name for p in summary.written] == ["date=2012-06-21"]
    assert fields_equal(read_back(tmp_path), np.concatenate(src))


@settings(max_examples=20)
@given(arrays(EVENT_DTYPE, st.integers(1, 50)))
def test_any_valid_events_round_trip(tmp_path_factory, ev):
    """Any bit pattern of the free fields survives; invalid sides, actions, prices and sizes
    are made valid first (the reader refuses those, tested below)."""
    ev["instrument"] = 0
    ev["ts_event"] = np.abs(ev["ts_event"] // 4)  # dates after 1970
    ev["side"] %= 2
    ev["action"] %= 3
    ev["price"] = np.abs(ev["price"] // 2) + 1
    ev["size"] = np.where(np.isfinite(ev["size"]), np.abs(ev["size"]), 1.0)
    reg = Registry()
    reg.add("X", "0.5")
    folder = tmp_path_factory.mktemp("pq")
    with parquet.ParquetWriter(folder, reg) as w:
        w.write(ev)
    got = read_back(folder, Registry())
    order = np.argsort(ev["ts_event"] // DAY_NS, kind="stable")
    assert fields_equal(got, ev[order])


def test_bad_files(tmp_path):
    reg, ev = two_instruments()
    ev = ev[ev["instrument"] == 0][:10]
    ev["action"] = 0
    ev["side"][3] = 5
    path = tmp_path / "x.parquet"
    parquet.to_frame(ev, "A", "0.01").write_parquet(path)
    with pytest.raises(DataError) as err:
        read_back(path)
    assert err.value.row == 4 and "bad side" in str(err.value)
    defects = Defects()
    assert len(list(parquet.read(path, Registry(), skip_bad=True, defects=defects))[0]) == 9
    assert defects["bad_side"] == 1
    parquet.to_frame(ev, "A", "0.01").drop("tick_size").write_parquet(path)
    with pytest.raises(DataError, match="missing column"):
        read_back(path)
    pl.DataFrame({"a": [1]}).write_parquet(path)
    with pytest.raises(DataError, match="missing column"):
        read_back(path)
    path.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable Parquet"):
        read_back(path)


def test_skipped_bad_rows_leave_later_rows_as_the_clean_file(tmp_path):
    """A file with bad rows, read with skip_bad, names file and row of each kind, and the
    feature rows after the next snapshot equal those of the same file without them, even when
    a well-formed row with a far-future ts_event and a huge seq got through."""
    from lobstream.kernels.book import new_book, new_report
    from lobstream.kernels.dtypes import ACTION_CLEAR, ROW_META_DTYPE
    from lobstream.kernels.features import events_to_rows, zscore_spec
    from lobstream.replay.feed.synthetic import synthetic_events

    clean = synthetic_events(3000, 1, seed=5, levels=4, snapshot_every=700)
    clears = np.flatnonzero(clean["action"] == ACTION_CLEAR)
    assert len(clears) >= 2 and clears[1] > 100
    dirty = clean.copy()
    k = clears[1] - 20  # before the second snapshot
    dirty["size"][k] = float("nan")
    dirty["price"][k + 1] = -3
    adopted = dirty[k + 2 : k + 3].copy()  # good content, bad time and sequence
    adopted["ts_event"] = 2**62
    adopted["seq"] = 2**63
    dirty = np.concatenate([dirty[: k + 2], adopted, dirty[k + 2 :]])
    path = tmp_path / "dirty.parquet"
    parquet.to_frame(dirty, "A", "0.01").write_parquet(path)
    defects = Defects()
    got = np.concatenate(list(parquet.read(path, Registry(), skip_bad=True, defects=defects)))
    assert sum(defects.values()) == 2
    assert all(f"{path} row " in where for where in defects.first.values())
    assert {int(w.rsplit(" ", 1)[1]) for w in defects.first.values()} == {k + 1, k + 2}

    spec = zscore_spec(10_000.0, 50.0, 0.0, 10.0, levels=4)

    def rows(ev):
        out = np.zeros((len(ev), 16), np.float32)
        meta = np.zeros(len(ev), ROW_META_DTYPE)
        m = events_to_rows(new_book(1, 1024, 4), spec, ev, out, meta, new_report())
        return out[:m], meta[:m]

    rows_clean, meta_clean = rows(clean)
    rows_got, meta_got = rows(got)
    after = int(clean["seq"][clears[1]])
    keep_c, keep_g = meta_clean["seq"] > after, meta_got["seq"] > after
    assert keep_c.sum() > 0 and keep_c.sum() == keep_g.sum()
    np.testing.assert_array_equal(rows_got[keep_g], rows_clean[keep_c])
