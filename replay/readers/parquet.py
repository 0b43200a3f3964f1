"""Canonical Parquet: events stored as they are, partitioned by instrument and UTC date.

Layout (hive style)::

    ROOT/instrument=<SYMBOL>/date=YYYY-MM-DD/part-00000.parquet

Columns: every ``EVENT_DTYPE`` field with its exact type (``ts_event`` i64, ``ts_recv`` i64,
``seq`` u64, ``price`` i64 ticks, ``size`` f64, ``instrument`` u32, ``side``/``action``/``flags``
u8), plus ``symbol`` (string) and ``tick_size`` (decimal string), so a part file alone says what
its prices mean and reading needs no registry: the reader registers the symbol with that tick
size and rewrites ``instrument`` to the registry's id (the same id when the registry was empty,
so a round trip is bit-exact). The date is that of ``ts_event`` in UTC; symbols are
percent-encoded in directory names. Parts are numbered after those already present, so several
conversions can add to one dataset. A directory is read part by part in path order (instrument,
date, part): one instrument after another, not merged by time.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np
import polars as pl

from lobstream.kernels.dtypes import ACTION_CLEAR, ACTION_TRADE, EVENT_DTYPE, SIDE_ASK
from lobstream.kernels.registry import Registry
from lobstream.replay.errors import DataError, Defects
from lobstream.replay.readers import DEFAULT_BATCH_ROWS

logger = logging.getLogger(__name__)

FORMAT = "parquet"
ROWS_PER_FILE = 1_000_000
_DAY_NS = 86_400 * 10**9
_POLARS = {
    np.dtype("<i8"): pl.Int64,
    np.dtype("<u8"): pl.UInt64,
    np.dtype("<f8"): pl.Float64,
    np.dtype("<u4"): pl.UInt32,
    np.dtype("u1"): pl.UInt8,
}
SCHEMA = {name: _POLARS[EVENT_DTYPE.fields[name][0]] for name in EVENT_DTYPE.names}
SCHEMA |= {"symbol": pl.String, "tick_size": pl.String}


def partition_dir(root: Path, symbol: str, day: dt.date) -> Path:
    """Where the parts of ``symbol`` on ``day`` live."""
    return root / f"instrument={quote(symbol, safe='')}" / f"date={day.isoformat()}"


class ParquetWriter:
    """Buffers events per (instrument, date) and writes part files of ``rows_per_file`` rows.

    Memory stays bounded by ``rows_per_file`` rows per open partition. Call :meth:`close`
    (or use as a context manager) to write what is left.
    """

    def __init__(self, root: str | Path, registry: Registry, rows_per_file: int = ROWS_PER_FILE):
        self.root = Path(root)
        self.registry = registry
        self.rows_per_file = rows_per_file
        self._buf: dict[tuple[int, int], list[np.ndarray]] = {}
        self._rows: dict[tuple[int, int], int] = {}
        self._next_part: dict[Path, int] = {}
        self.written: dict[Path, int] = {}

    def __enter__(self) -> ParquetWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(self, events: np.ndarray) -> None:
        """Add a batch, ``events`` (n,) EVENT_DTYPE (not modified)."""
        if len(events) == 0:
            return
        key = events["instrument"].astype(np.int64) << 32 | (events["ts_event"] // _DAY_NS)
        if (key == key[0]).all():  # the usual case: one instrument, one day
            self._add((int(events["instrument"][0]), int(key[0] & 0xFFFFFFFF)), events.copy())
            return
        order = np.argsort(key, kind="stable")
        keys, starts = np.unique(key[order], return_index=True)
        for k, a, b in zip(keys, starts, np.r_[starts[1:], len(order)], strict=True):
            self._add((int(k >> 32), int(k & 0xFFFFFFFF)), events[order[a:b]])

    def _add(self, part: tuple[int, int], events: np.ndarray) -> None:
        self._buf.setdefault(part, []).append(events)
        self._rows[part] = self._rows.get(part, 0) + len(events)
        if self._rows[part] >= self.rows_per_file:
            self._flush(part)

    def _flush(self, part: tuple[int, int]) -> None:
        chunks = self._buf.pop(part, [])
        self._rows.pop(part, None)
        if not chunks:
            return
        events = np.concatenate(chunks)
        inst = self.registry.by_id(part[0])
        folder = partition_dir(self.root, inst.symbol, dt.date(1970, 1, 1) + dt.timedelta(part[1]))
        folder.mkdir(parents=True, exist_ok=True)
        if folder not in self._next_part:
            self._next_part[folder] = len(list(folder.glob("part-*.parquet")))
        for a in range(0, len(events), self.rows_per_file):
            piece = events[a : a + self.rows_per_file]
            path = folder / f"part-{self._next_part[folder]:05d}.parquet"
            self._next_part[folder] += 1
            to_frame(piece, inst.symbol, str(inst.tick_size)).write_parquet(
                path, compression="zstd"
            )
            self.written[path] = len(piece)
            logger.debug("wrote %s (%d events)", path, len(piece))

    def close(self) -> dict[Path, int]:
        """Write every buffered partition; returns every file written with its row count."""
        for part in list(self._buf):
            self._flush(part)
        return self.written


def to_frame(events: np.ndarray, symbol: str, tick_size: str) -> pl.DataFrame:
    """One instrument's events as a polars frame in the canonical schema."""
    cols = {name: np.ascontiguousarray(events[name]) for name in EVENT_DTYPE.names}
    df = pl.DataFrame(cols, schema={k: SCHEMA[k] for k in EVENT_DTYPE.names})
    return df.with_columns(symbol=pl.lit(symbol), tick_size=pl.lit(tick_size))


def detect(path: Path) -> bool:
    """A ``.parquet`` file, or a directory holding some."""
    path = Path(path)
    if path.is_dir():
        return next(path.rglob("*.parquet"), None) is not None
    return path.suffix == ".parquet"


def part_files(path: str | Path) -> list[Path]:
    """The part files under ``path`` in read order (or ``[path]`` for a file)."""
    path = Path(path)
    if path.is_dir():
        return sorted(path.rglob("*.parquet"), key=lambda p: p.relative_to(path).parts)
    return [path]


def _check(df: pl.DataFrame, path: Path) -> None:
    missing = [c for c in SCHEMA if c not in df.columns]
    if missing:
        raise DataError(
            path,
            f"missing column(s) {missing}; a canonical Parquet file has {list(SCHEMA)} "
            "(write it with `lobstream convert`)",
        )
    wrong = [f"{c}: {df.schema[c]} (expected {t})" for c, t in SCHEMA.items() if df.schema[c] != t]
    if wrong:
        raise DataError(path, f"column types differ from the canonical schema: {wrong}")
    if len(df) and (df["symbol"].n_unique() != 1 or df["tick_size"].n_unique() != 1):
        raise DataError(path, "a part file must hold exactly one symbol and one tick_size")


def _bad_rows(ev: np.ndarray) -> list[tuple[str, np.ndarray]]:
    book = ev["action"] != ACTION_CLEAR
    return [
        ("bad_side", book & (ev["side"] > SIDE_ASK)),
        ("bad_action", ev["action"] > ACTION_TRADE),
        ("non_positive_price", book & (ev["price"] <= 0)),
        ("bad_size", book & ~(np.isfinite(ev["size"]) & (ev["size"] >= 0))),
    ]


def read(
    path: str | Path,
    registry: Registry,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    skip_bad: bool = False,
    defects: Defects | None = None,
) -> Iterator[np.ndarray]:
    """Event batches from a canonical Parquet file or dataset directory.

    Yields ndarray (n,) EVENT_DTYPE (n <= ``batch_rows``), one instrument per batch. Raises
    :class:`DataError` naming the file and row of the first bad record (nulls, side > 1,
    action > 2, price <= 0 or size negative / not finite on a book event) unless ``skip_bad``.
    """
    defects = Defects() if defects is None else defects
    for file in part_files(path):
        try:
            df = pl.read_parquet(file)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise DataError(file, f"not a readable Parquet file: {exc}") from None
        _check(df, file)
        if len(df) == 0:
            continue
        nulls = df.select(pl.any_horizontal(pl.all().is_null())).to_series().to_numpy()
        symbol = df["symbol"][0]
        if symbol is None or df["tick_size"][0] is None:
            raise DataError(file, "symbol or tick_size is null", row=1)
        inst = registry.add(symbol, df["tick_size"][0])
        ev = np.zeros(len(df), EVENT_DTYPE)
        for name in EVENT_DTYPE.names:
            ev[name] = df[name].fill_null(0).to_numpy()
        ev["instrument"] = inst.id
        bad = [("null_field", nulls), *_bad_rows(ev)]
        any_bad = np.logical_or.reduce([m for _, m in bad])
        if any_bad.any():
            first = int(np.flatnonzero(any_bad)[0])
            kind = next(k for k, m in bad if m[first])
            if not skip_bad:
                raise DataError(
                    file,
                    f"{kind.replace('_', ' ')}: {ev[first]} (or pass --skip-bad)",
                    row=first + 1,
                )
            for kind, m in bad:
                if m.any():
                    defects.add(kind, f"{file} row {int(np.flatnonzero(m)[0]) + 1}", int(m.sum()))
            ev = ev[~any_bad]
        for a in range(0, len(ev), batch_rows):
            yield ev[a : a + batch_rows]
