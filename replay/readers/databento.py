"""Databento: DBN files (MBO, MBP-10, MBP-1; DBN versions 1-3, plain or zstd) and MBO CSV.

DBN is decoded by the ``databento-dbn`` package with ``VersionUpgradePolicy.UPGRADE_TO_V3``, so
versions 1, 2 and 3 all arrive as v3 records (the MBO/MBP layouts did not change between
versions). The file is fed to the decoder in 1 MiB pieces, so memory stays flat.

- MBO: orders are aggregated into price levels by :func:`lobstream.replay.readers._mbo.mbo_to_events`
  (adds, cancels, modifies, clear ``R``; fills change nothing because the venue follows them
  with a cancel; trades become ``ACTION_TRADE``). Records flagged LAST (128) end a group; the
  SNAPSHOT flag (32) is carried to ``FLAG_SNAPSHOT``; ``R`` becomes ``ACTION_CLEAR``.
- MBP-10 / MBP-1: each record's levels are diffed against the previous record's levels by
  :func:`lobstream.replay.readers._mbo.levels_to_events`, so the book built from the events equals the
  record's own levels after every record. ``INT64_MAX`` prices are absent levels. A trade record
  whose levels are all undefined (ICE sends such) carries no book: only its trade is emitted.
- The CSV export of MBO (``ts_recv,ts_event,rtype,...,sequence,symbol`` with ISO-8601 times and
  decimal prices) goes through the same MBO aggregation.

Prices are fixed-point int64 in units of 1e-9. Ticks come from the instrument registry (symbol
= the raw symbol, e.g. ``ESM4``), else from a definition file (``*.definition.dbn*``) beside the
data (``min_price_increment``: 0.25 for ES), else the coarsest decimal grid holding every price
of the first batch; the choice is logged. ``ts_recv`` of events is 0 (Databento's capture clock
is not this host's monotonic clock). Trades with side ``N`` (no aggressor) are not emitted and
are counted in the log.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import databento_dbn as dbn
import numpy as np
import polars as pl

from lobstream.kernels.dtypes import EVENT_DTYPE, FLAG_LAST, FLAG_SNAPSHOT
from lobstream.kernels.registry import Instrument, Registry
from lobstream.replay.errors import DataError, Defects
from lobstream.replay.readers import DEFAULT_BATCH_ROWS, _decimal, _files
from lobstream.replay.readers import _mbo as mbo_kernel
from lobstream.replay.readers._decimal import EMPTY, OK

logger = logging.getLogger(__name__)

FORMAT = "databento"

_PIECE = 1 << 20
_CSV_BATCH = 100_000
_NANO = 9  # decimals of the fixed-point prices
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# Byte layouts of the *external* DBN v3 records, as returned by ``bytes(record)`` (the DBN
# specification's C structs). They describe the source format, not a lobstream record, so
# they live with the reader rather than in kernels/dtypes.py.
_HEADER = [
    ("length", "u1"),
    ("rtype", "u1"),
    ("publisher_id", "<u2"),
    ("instrument_id", "<u4"),
    ("ts_event", "<u8"),
]
DBN_MBO = np.dtype(
    _HEADER
    + [
        ("order_id", "<u8"),
        ("price", "<i8"),
        ("size", "<u4"),
        ("flags", "u1"),
        ("channel_id", "u1"),
        ("action", "u1"),
        ("side", "u1"),
        ("ts_recv", "<u8"),
        ("ts_in_delta", "<i4"),
        ("sequence", "<u4"),
    ]
)
_LEVEL = [
    ("bid_px", "<i8"),
    ("ask_px", "<i8"),
    ("bid_sz", "<u4"),
    ("ask_sz", "<u4"),
    ("bid_ct", "<u4"),
    ("ask_ct", "<u4"),
]
_MBP_HEAD = _HEADER + [
    ("price", "<i8"),
    ("size", "<u4"),
    ("action", "u1"),
    ("side", "u1"),
    ("flags", "u1"),
    ("depth", "u1"),
    ("ts_recv", "<u8"),
    ("ts_in_delta", "<i4"),
    ("sequence", "<u4"),
]
DBN_MBP1 = np.dtype(_MBP_HEAD + [("levels", np.dtype(_LEVEL), (1,))])
DBN_MBP10 = np.dtype(_MBP_HEAD + [("levels", np.dtype(_LEVEL), (10,))])
assert DBN_MBO.itemsize == 56 and DBN_MBP1.itemsize == 80 and DBN_MBP10.itemsize == 368

_SCHEMAS = {
    "mbo": (dbn.MBOMsg, DBN_MBO),
    "mbp-1": (dbn.MBP1Msg, DBN_MBP1),
    "mbp-10": (dbn.MBP10Msg, DBN_MBP10),
}

_CSV_COLUMNS = (
    "ts_recv,ts_event,rtype,publisher_id,instrument_id,action,side,price,size,"
    "channel_id,order_id,flags,ts_in_delta,sequence"
)
_CSV_SCHEMA = {
    "ts_recv": pl.Utf8,
    "ts_event": pl.Utf8,
    "rtype": pl.Int64,
    "publisher_id": pl.Int64,
    "instrument_id": pl.Int64,
    "action": pl.Utf8,
    "side": pl.Utf8,
    "price": pl.Utf8,
    "size": pl.Int64,
    "channel_id": pl.Int64,
    "order_id": pl.UInt64,
    "flags": pl.Int64,
    "ts_in_delta": pl.Int64,
    "sequence": pl.Int64,
    "symbol": pl.Utf8,
}


def detect(path: Path) -> bool:
    """A ``.dbn``/``.dbn.zst`` file (or DBN content), or a Databento MBO CSV export."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".dbn", ".dbn.zst")):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head[:3] == b"DBN":
            return True
        if name.endswith((".csv", ".csv.gz")):
            return _csv_header(path).startswith(_CSV_COLUMNS)
    except (OSError, EOFError):
        return False
    return False


def _csv_header(path: Path) -> str:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        return fh.readline().decode("ascii", "replace").strip()


def read(
    path: Path,
    registry: Registry,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    skip_bad: bool = False,
    defects: Defects | None = None,
) -> Iterator[np.ndarray]:
    """Event batches (EVENT_DTYPE, at most ``batch_rows`` events each) from one Databento file.

    Raises
    ------
    DataError
        An empty file, a ``.csv.gz`` that is not gzip or is cut short, a zstd stream cut inside
        a frame, truncated or undecodable DBN (byte offset), or a malformed record (unknown
        action or side, undefined or off-tick price, non-numeric CSV field) naming the file and
        record/row; with ``skip_bad`` the record is skipped and counted by kind in ``defects``.
    """
    path = Path(path)
    defects = Defects() if defects is None else defects
    problem = _files.empty_problem(path)
    if problem:
        raise DataError(path, problem + "; expected a Databento DBN or MBO CSV file")
    rd = _Reader(path, registry, skip_bad, defects)
    name = path.name.lower()
    src = rd.csv_batches() if name.endswith((".csv", ".csv.gz")) else rd.dbn_batches()
    for events in src:
        for start in range(0, len(events), batch_rows):
            yield events[start : start + batch_rows]
    rd.finish()


def definition_ticks(folder: Path) -> dict[str, Decimal]:
    """``raw_symbol -> min_price_increment`` from every ``*.definition.dbn*`` file in ``folder``."""
    ticks: dict[str, Decimal] = {}
    for f in sorted(folder.glob("*.definition.dbn*")):
        try:
            for rec in _decode_all(f):
                if hasattr(rec, "min_price_increment") and rec.min_price_increment > 0:
                    ticks[str(rec.raw_symbol)] = Decimal(int(rec.min_price_increment)).scaleb(
                        -_NANO
                    )
        except (dbn.DBNError, OSError, ValueError) as exc:
            logger.warning("%s: definition file not readable (%s); ignored", f, exc)
    return ticks


def _decode_all(path: Path) -> list:
    dec = _decoder(path)
    with open(path, "rb") as fh:
        dec.write(fh.read())
    return dec.decode()[1:]


def _decoder(path: Path):
    with open(path, "rb") as fh:
        zst = fh.read(4) == _ZSTD_MAGIC
    return dbn.DBNDecoder(
        upgrade_policy=dbn.VersionUpgradePolicy.UPGRADE_TO_V3,
        compression=dbn.Compression.ZSTD if zst else dbn.Compression.NONE,
    )


class _Reader:
    def __init__(self, path: Path, registry: Registry, skip_bad: bool, defects: Defects):
        self.path = path
        self.registry = registry
        self.skip_bad = skip_bad
        self.defects = defects
        self.by_source: dict[int, Instrument] = {}  # Databento instrument_id -> instrument
        self.symbols: dict[int, str] = {}
        self.dataset = ""
        self.def_ticks: dict[str, Decimal] | None = None
        self.units = np.zeros(0, np.int64)
        self.mbo_state = mbo_kernel.new_mbo_state()
        self.lv_state: mbo_kernel.LevelsState | None = None
        self.counts = mbo_kernel.new_counts()
        self.n_records = 0
        self.schema: str | None = ""
        self.last_ts: dict[int, int] = {}
        self.clamped = 0

    def bad(self, kind: str, problem: str, row: int | None, *, offset: int | None = None) -> None:
        if not self.skip_bad:
            raise DataError(self.path, problem, row=row, offset=offset)
        where = f"row {row}" if row is not None else f"byte {offset}"
        self.defects.add(kind, f"{self.path} {where}")

    # -- instruments ----------------------------------------------------------------------
    def ids(self, source_ids: np.ndarray, prices: np.ndarray) -> np.ndarray:
        """lobstream ids (uint32) for Databento instrument ids; registers new ones."""
        uniq, inv = np.unique(source_ids, return_inverse=True)
        out = np.empty(len(uniq), np.uint32)
        for j, sid in enumerate(uniq.tolist()):
            inst = self.by_source.get(sid)
            if inst is None:
                inst = self.register(sid, prices[source_ids == sid])
            out[j] = inst.id
        return out[inv]

    def register(self, sid: int, prices: np.ndarray) -> Instrument:
        sym = self.symbols.get(sid) or f"{self.dataset or 'databento'}:{sid}"
        if sym in self.registry:
            inst = self.registry.by_symbol(sym)
            how = "registry"
        else:
            if self.def_ticks is None:
                self.def_ticks = definition_ticks(self.path.parent)
            tick = self.def_ticks.get(sym)
            how = "definition file"
            if tick is None:
                valid = prices[(prices != mbo_kernel.UNDEF_PRICE) & (prices > 0)]
                tick = _decimal.infer_tick(_decimal.max_decimals(valid, _NANO, 2))
                how = "inferred from the data (coarsest decimal grid of the first batch)"
            inst = self.registry.add(sym, tick)
        logger.info("%s: %s tick size %s (%s)", self.path, sym, inst.tick_size, how)
        if inst.id >= len(self.units):
            units = np.zeros(inst.id + 1, np.int64)
            units[: len(self.units)] = self.units
            self.units = units
        self.units[inst.id] = _decimal.tick_units(inst.tick_size, _NANO)
        self.by_source[sid] = inst
        return inst

    # -- DBN ------------------------------------------------------------------------------
    def dbn_batches(self) -> Iterator[np.ndarray]:
        if _files.magic(self.path) == _ZSTD_MAGIC:
            # the decompressor cannot tell a stream cut short from one that ended: a
            # truncated .zst would otherwise read as a shorter file
            cut = _files.zstd_problem(self.path)
            if cut is not None:
                # raises unless skip_bad; skipping, the whole records before the cut are read
                self.bad("truncated_file", cut[0], None, offset=cut[1])
        dec = _decoder(self.path)
        meta = None
        offset = 0
        with open(self.path, "rb") as fh:
            while True:
                piece = fh.read(_PIECE)
                if not piece:
                    break
                offset += len(piece)
                try:
                    dec.write(piece)
                    recs = dec.decode()
                except (dbn.DBNError, ValueError) as exc:
                    self.bad(
                        "bad_dbn",
                        f"not decodable as DBN ({_files.one_line(exc)}); "
                        "expected a Databento DBN file (v1-v3, plain or zstd)",
                        None,
                        offset=offset,
                    )
                    return
                if meta is None and recs:
                    meta = recs[0]
                    recs = recs[1:]
                    self.start_dbn(meta)
                if self.schema is None:
                    return
                if recs:
                    yield self.dbn_records(meta, recs)
        try:
            left = len(dec.buffer())
        except (dbn.DBNError, ValueError):
            left = 0
        if meta is None:
            self.bad(
                "bad_dbn",
                "no DBN metadata header found; expected a Databento DBN file",
                None,
                offset=0,
            )
        elif left:
            self.bad(
                "truncated_file",
                f"{left} bytes at the end do not form a whole record: "
                f"the file is truncated after record {self.n_records}; re-download it",
                self.n_records + 1,
            )

    def start_dbn(self, meta) -> None:
        schema = str(meta.schema).lower().replace("schema.", "").replace("_", "-")
        if schema == "definition":
            # instrument definitions carry no book; they are read for tick sizes instead
            logger.info(
                "%s: a definition file: no events (its tick sizes are used by the data "
                "files beside it)",
                self.path,
            )
            self.schema = None
            return
        if schema not in _SCHEMAS:
            raise DataError(
                self.path,
                f"DBN schema {meta.schema} is not supported; expected mbo, mbp-1 or mbp-10",
            )
        self.schema = schema
        self.dataset = str(meta.dataset)
        for raw, intervals in (meta.mappings or {}).items():
            for iv in intervals:
                try:
                    self.symbols[int(iv["symbol"])] = raw
                except (KeyError, ValueError, TypeError):
                    continue
        if schema != "mbo":
            self.lv_state = mbo_kernel.new_levels_state(1 if schema == "mbp-1" else 10)
        logger.info("%s: DBN v%s %s %s", self.path, meta.version, self.dataset, schema)

    def dbn_records(self, meta, recs: list) -> np.ndarray:
        cls, dtype = _SCHEMAS[self.schema]
        keep = [r for r in recs if isinstance(r, cls)]
        if len(keep) != len(recs):
            logger.debug(
                "%s: %d non-%s records ignored", self.path, len(recs) - len(keep), self.schema
            )
        first = self.n_records
        self.n_records += len(recs)
        if not keep:
            return np.zeros(0, EVENT_DTYPE)
        arr = np.frombuffer(b"".join(bytes(r) for r in keep), dtype=dtype)
        if self.schema == "mbo":
            rows = np.arange(first + 1, first + 1 + len(arr))
            return self.mbo(
                arr["ts_event"].view(np.int64),
                arr["action"],
                arr["side"],
                arr["price"],
                arr["size"].astype(np.int64),
                arr["order_id"],
                arr["flags"],
                arr["instrument_id"],
                rows,
            )
        return self.mbp(arr, first)

    # -- MBO ------------------------------------------------------------------------------
    def mbo(self, ts, action, side, price, size, order_id, flags, source_ids, rows) -> np.ndarray:
        """MBO columns (n,) -> events; ``rows`` (n,) are the file rows/records, for errors."""
        if len(ts) == 0:
            return np.zeros(0, EVENT_DTYPE)
        inst = self.ids(source_ids, price)
        counts = mbo_kernel.new_counts()
        ev = mbo_kernel.mbo_to_events(
            self.mbo_state, ts, action, side, price, size, order_id, flags, inst, self.units, counts
        )
        self.check(counts, rows)
        return self.clamp(ev)

    def clamp(self, ev: np.ndarray) -> np.ndarray:
        """Make ts_event non-decreasing per instrument, in place; clamps are counted.

        Databento orders records by ``ts_recv``; some venues (ICE) stamp ``ts_event`` out of
        that order, and the book kernel would drop an update whose time goes backwards.
        """
        for i in np.unique(ev["instrument"]).tolist():
            sel = np.flatnonzero(ev["instrument"] == i)
            ts = ev["ts_event"][sel]
            prev = self.last_ts.get(i, np.iinfo(np.int64).min)
            fixed = np.maximum.accumulate(np.concatenate(([prev], ts)))[1:]
            n = int((fixed != ts).sum())
            if n:
                self.clamped += n
                ev["ts_event"][sel] = fixed
            self.last_ts[i] = int(fixed[-1])
        return ev

    def check(self, counts: np.ndarray, rows: np.ndarray) -> None:
        """Malformed-record conditions raise (or count); source-state ones are logged."""
        malformed = {
            mbo_kernel.MBO_BAD_PRICE: "undefined or off-tick price",
            mbo_kernel.MBO_BAD_SIDE: "side is not B or A",
            mbo_kernel.MBO_BAD_ACTION: "action is not one of A C M F T R N",
        }
        for code, what in malformed.items():
            n = int(counts[0, code])
            if n:
                row = int(rows[counts[1, code]])
                if not self.skip_bad:
                    raise DataError(
                        self.path,
                        f"{what}; expected a valid Databento record (use --skip-bad to skip it)",
                        row=row,
                    )
                self.defects.add(mbo_kernel.MBO_CODE_NAMES[code], f"{self.path} row {row}", n)
        counts[0, list(malformed)] = 0
        self.counts[0] += counts[0]

    # -- MBP ------------------------------------------------------------------------------
    def mbp(self, arr: np.ndarray, first: int) -> np.ndarray:
        lv = arr["levels"]
        n = len(arr)
        inst = self.ids(arr["instrument_id"], lv["bid_px"][:, 0])
        units = self.units[inst][:, None]
        bpx, apx = lv["bid_px"], lv["ask_px"]
        bad = np.zeros(n, bool)
        out_px = []
        for px in (bpx, apx):
            undef = px == mbo_kernel.UNDEF_PRICE
            ticks = np.where(undef, mbo_kernel.MISSING, px // units)
            off = ~undef & ((px % units != 0) | (px <= 0))
            bad |= off.any(axis=1)
            out_px.append(ticks)
        dflags = arr["flags"]
        flags = np.where(dflags & 128, FLAG_LAST, 0) | np.where(dflags & 32, FLAG_SNAPSHOT, 0)
        action, side = arr["action"], arr["side"]
        undef_all = (bpx == mbo_kernel.UNDEF_PRICE).all(1) & (apx == mbo_kernel.UNDEF_PRICE).all(1)
        has_book = ~(undef_all & (action == ord("T")))
        tr_side = np.full(n, 255, np.uint8)
        is_trade = action == ord("T")
        tr_side[is_trade & (side == ord("B"))] = 0
        tr_side[is_trade & (side == ord("A"))] = 1
        no_side = int((is_trade & (tr_side == 255)).sum())
        self.counts[0, mbo_kernel.MBO_TRADE_NO_SIDE] += no_side
        tpx = arr["price"]
        tr_ok = (tr_side <= 1) & (tpx != mbo_kernel.UNDEF_PRICE)
        bad |= tr_ok & ((tpx % units[:, 0] != 0) | (tpx <= 0))
        tr_side[~tr_ok] = 255
        if bad.any():
            for j in np.flatnonzero(bad)[:1]:
                self.bad(
                    "bad_price",
                    f"record {first + j + 1}: a level or trade price is off "
                    "the tick grid or not positive; set the instrument's tick_size in the "
                    "registry",
                    first + int(j) + 1,
                )
            self.defects.add("bad_price", f"{self.path}", int(bad.sum()) - 1)
            keep = ~bad
        else:
            keep = slice(None)
        return self.clamp(
            mbo_kernel.levels_to_events(
                self.lv_state,
                arr["ts_event"].view(np.int64)[keep],
                inst[keep],
                out_px[0][keep],
                lv["bid_sz"].astype(np.float64)[keep],
                out_px[1][keep],
                lv["ask_sz"].astype(np.float64)[keep],
                flags.astype(np.uint8)[keep],
                has_book.astype(np.uint8)[keep],
                (tpx // units[:, 0])[keep],
                arr["size"].astype(np.float64)[keep],
                tr_side[keep],
            )
        )

    # -- CSV ------------------------------------------------------------------------------
    def csv_batches(self) -> Iterator[np.ndarray]:
        problem = _files.gzip_name_problem(self.path)
        if problem:
            raise DataError(self.path, problem)
        try:
            header = _csv_header(self.path)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(self.path, _files.gzip_read_problem(exc), row=1) from None
        if not header.startswith(_CSV_COLUMNS):
            raise DataError(
                self.path,
                f"header {_files.show_line(header)} is not a Databento MBO CSV; "
                f"expected {_CSV_COLUMNS},symbol",
                row=1,
            )
        lf = pl.scan_csv(self.path, schema=_CSV_SCHEMA, has_header=True)
        row0 = 2
        try:
            for df in lf.collect_batches(chunk_size=_CSV_BATCH):
                yield self.csv_frame(df, row0)
                row0 += len(df)
        except pl.exceptions.PolarsError as exc:
            self.bad(
                "bad_record",
                f"not a valid MBO CSV row ({_files.polars_problem(exc)}); expected integers in "
                "rtype, size, order_id, flags, sequence",
                row0,
            )
        except (OSError, EOFError) as exc:  # polars' gzip decoder: a truncated stream
            self.bad("truncated_file", _files.gzip_read_problem(exc), row0)

    def csv_frame(self, df: pl.DataFrame, row0: int) -> np.ndarray:
        ts = df.select(
            pl.col("ts_event")
            .str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", time_unit="ns", strict=False)
            .cast(pl.Int64)
        ).to_series()
        bad = ts.is_null().to_numpy()
        for j in np.flatnonzero(bad)[:1]:
            self.bad(
                "bad_timestamp",
                f"ts_event {df['ts_event'][int(j)]!r} is not an "
                "ISO-8601 UTC time like 2025-07-17T08:05:03.360677248Z",
                row0 + int(j),
            )
        price_s = df["price"].fill_null("").to_list()
        pv, pst, _ = _decimal.parse_fixed(price_s, _NANO)
        empty = pst == EMPTY
        action = np.frombuffer(
            "".join((a or "?")[:1] for a in df["action"].to_list()).encode("ascii", "replace"),
            np.uint8,
        )
        side = np.frombuffer(
            "".join((s or "?")[:1] for s in df["side"].to_list()).encode("ascii", "replace"),
            np.uint8,
        )
        priced = np.isin(action, np.frombuffer(b"AMT", np.uint8))
        price_bad = (pst != OK) & ~(empty & ~priced)
        price_bad |= (pst == OK) & (pv <= 0) & priced
        for j in np.flatnonzero(price_bad & ~bad)[:1]:
            self.bad(
                "bad_price", f"price {price_s[int(j)]!r} is not a positive decimal", row0 + int(j)
            )
        size = df["size"].fill_null(-1).to_numpy()
        neg = size < 0
        for j in np.flatnonzero(neg & ~bad & ~price_bad)[:1]:
            self.bad(
                "negative_size",
                f"size {size[int(j)]} is negative or missing; expected a count >= 0",
                row0 + int(j),
            )
        keep = ~(bad | price_bad | neg)
        if self.skip_bad and not keep.all():
            self.defects.add("bad_record", f"{self.path} row {row0}", int((~keep).sum()) - 1)
        price = np.where(empty, mbo_kernel.UNDEF_PRICE, pv)
        sym = df["symbol"].to_numpy()
        sid = df["instrument_id"].fill_null(0).to_numpy()
        for s_id in np.unique(sid).tolist():
            if s_id not in self.symbols:
                self.symbols[s_id] = str(sym[np.flatnonzero(sid == s_id)[0]])
        idx = np.flatnonzero(keep)
        return self.mbo(
            ts.to_numpy()[idx],
            action[idx],
            side[idx],
            price[idx],
            size[idx],
            df["order_id"].fill_null(0).to_numpy()[idx],
            df["flags"].fill_null(0).to_numpy().astype(np.uint8)[idx],
            sid[idx],
            row0 + idx,
        )

    def finish(self) -> None:
        c = self.counts[0]
        parts = [f"{int(c[k])} {mbo_kernel.MBO_CODE_NAMES[k]}" for k in range(len(c)) if c[k]]
        if self.clamped:
            parts.append(f"{self.clamped} ts_event clamped to keep time non-decreasing")
        if parts:
            logger.info("%s: source conditions (not errors): %s", self.path, ", ".join(parts))
