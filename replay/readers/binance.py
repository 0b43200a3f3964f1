"""Binance depth data: hftbacktest recordings (``<local_ts_ns> <json>`` lines) and depth CSVs.

Recordings (gzip or plain text, one websocket message per line) hold ``depthUpdate`` diffs,
the REST snapshot line (``lastUpdateId``), ``trade`` / ``aggTrade`` prints and ``bookTicker``
lines (ignored, counted in the log). Binance's historical futures depth CSVs
(``symbol,timestamp,first_update_id,last_update_id,side,update_type,price,qty,pu``) hold
``snap`` rows (a snapshot) and ``set`` rows (diffs). Both go through the update-id state
machine of :mod:`lobstream.replay.readers._depth` (what is emitted, sync rules, ``seq``);
the same recorder's Hyperliquid lines are parsed by :mod:`lobstream.replay.readers.hyperliquid`.

Binance specifics:

- Trades' ``side`` is the aggressor's: ``SIDE_BID`` when ``m`` is false.
- Files read one after the other with the same registry chain: ``btcusdt_20240808.gz`` then
  ``btcusdt_20240809.gz`` (which has no snapshot) continue the same book. A file read alone
  without a snapshot yields trades only.
- ``ts_event``: futures diffs use ``T`` (transaction time), spot diffs ``E``; trades ``T``; a
  snapshot without a time (spot REST) takes the newest exchange time seen for the instrument.
  ``ts_recv`` is 0: the recorder's clock is wall time, not this host's monotonic clock.
- Decoding: ``depthUpdate`` lines (most of the bytes) are decoded in bulk by polars under an
  explicit schema, the other lines by the json module, one call per block of about 1 MiB of
  compressed input; a block with a malformed line falls back to line-by-line decoding, which
  names the row. Gzip is inflated block by block, so every whole line before a truncation
  is read and memory stays flat (about 310 MiB peak RSS for one USD-M file and for ten).
- Instruments are registered as ``binance:SYM`` (spot), ``binance-futures:SYM`` (USD-M) and
  ``binance-delivery:SYM`` (COIN-M); a registry entry under the plain symbol is used too.
  Without one, the tick is inferred from the first chunk (spot BTCUSDT: 0.01; futures: 0.1)
  and logged.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

from lobstream.kernels.dtypes import SIDE_ASK, SIDE_BID
from lobstream.kernels.registry import Registry
from lobstream.replay.errors import DataError, Defects
from lobstream.replay.readers import DEFAULT_BATCH_ROWS, _files
from lobstream.replay.readers._depth import (
    DEPTH,
    SNAP,
    TRADE,
    Chain,
    Chunk,
    DepthReader,
    line_blocks,
)
from lobstream.replay.readers.hyperliquid import HyperliquidParser

FORMAT = "binance"

_CSV_BATCH = 200_000
_CSV_HEADER = "symbol,timestamp,first_update_id,last_update_id,side,update_type,price,qty,pu"
_CSV_SCHEMA = {
    "symbol": pl.Utf8,
    "timestamp": pl.Int64,
    "first_update_id": pl.Int64,
    "last_update_id": pl.Int64,
    "side": pl.Utf8,
    "update_type": pl.Utf8,
    "price": pl.Utf8,
    "qty": pl.Utf8,
    "pu": pl.Int64,
}
_JSON = json.JSONDecoder()
_DEPTH_SCHEMA = pl.Struct(
    {
        "data": pl.Struct(
            {
                "E": pl.Int64,
                "T": pl.Int64,
                "s": pl.Utf8,
                "U": pl.Int64,
                "u": pl.Int64,
                "pu": pl.Int64,
                "b": pl.List(pl.List(pl.Utf8)),
                "a": pl.List(pl.List(pl.Utf8)),
            }
        )
    }
)
_LINE_RE = re.compile(rb"^\d{15,20} \{")


def detect(path: Path) -> bool:
    """A recording of the hftbacktest recorder (Binance or Hyperliquid lines) or a depth CSV."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
        opener = gzip.open if magic == b"\x1f\x8b" else open
        with opener(path, "rb") as fh:
            head = fh.read(4096)
    except (OSError, EOFError):
        return False
    first = head.split(b"\n", 1)[0]
    if first.strip().decode("ascii", "replace") == _CSV_HEADER:
        return True
    return bool(_LINE_RE.match(first)) and (
        b'"stream"' in head or b"lastUpdateId" in head or b'"channel"' in head
    )


def read(
    path: Path,
    registry: Registry,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    skip_bad: bool = False,
    defects: Defects | None = None,
) -> Iterator[np.ndarray]:
    """Event batches (EVENT_DTYPE, at most ``batch_rows`` events each) from one Binance file.

    Raises
    ------
    DataError
        A malformed line (bad JSON, missing field, non-numeric or non-positive price, negative
        quantity, unknown side, truncated gzip) names the file and row, unless ``skip_bad``:
        then the message is skipped and counted by kind in ``defects``.
    """
    path = Path(path)
    defects = Defects() if defects is None else defects
    problem = _files.empty_problem(path)
    if problem:
        raise DataError(path, problem + "; expected a recording of websocket messages or a "
                        "depth CSV")  # fmt: skip
    rd = _Reader(path, registry, skip_bad, defects)
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic != b"\x1f\x8b" and _is_csv(path):
        chunks = rd.csv_chunks()
    else:
        chunks = rd.json_chunks()
    for events in chunks:
        for start in range(0, len(events), batch_rows):
            yield events[start : start + batch_rows]
    rd.finish()


def _is_csv(path: Path) -> bool:
    with open(path, "rb") as fh:
        first = fh.readline()
    return first.strip().decode("ascii", "replace") == _CSV_HEADER


def _symbol_from_name(path: Path) -> str:
    stem = path.name.split(".")[0]
    return re.sub(r"_\d{8}$", "", stem).upper()


class _Reader(DepthReader):
    def __init__(self, path: Path, registry: Registry, skip_bad: bool, defects: Defects):
        super().__init__(path, registry, skip_bad, defects)
        self.file_symbol = _symbol_from_name(path)
        self.last_depth_key: str | None = None
        self.hyperliquid = HyperliquidParser(self)

    # -- market and instrument -----------------------------------------------------------
    def key_for(self, symbol: str, futures: bool) -> str:
        venue = (
            "binance-delivery" if "_" in symbol else ("binance-futures" if futures else "binance")
        )
        key = f"{venue}:{symbol}"
        if key not in self.chains:
            self.chains[key] = Chain(futures=futures or "_" in symbol)
        return key

    # -- JSON lines -----------------------------------------------------------------------
    def json_chunks(self) -> Iterator[np.ndarray]:
        row = 0
        for lines, problem in line_blocks(self.path):
            if lines:
                chunk = Chunk()
                row = self.parse_lines(lines, row, chunk)
                yield self.process(chunk)
            if problem:
                self.bad(
                    "truncated_file",
                    f"{problem} after row {row}; expected a complete gzip file: re-download it",
                    row + 1,
                )
                return

    def parse_lines(self, lines: list[bytes], row: int, ck: Chunk) -> int:
        """Parse a chunk of lines into ``ck``; returns the row number of the last line."""
        rows: list[int] = []
        parts: list[bytes] = []
        for line in lines:
            row += 1
            sp = line.find(b" ", 0, 32)
            if sp <= 0:
                if line.strip():
                    self.bad("bad_line", "expected '<local_ts_ns> <json>', found no space", row)
                continue
            # the BBO stream is not part of the book: skip it before paying for JSON
            if b"@bookTicker" in line[sp : sp + 48]:
                self.stats.ignored += 1
                continue
            part = line[sp + 1 :].rstrip()
            if b'"lastUpdateId"' in part[:64]:
                try:
                    ck.local_ns[row] = int(line[:sp])
                except ValueError:
                    pass  # the snapshot keeps the chain's time; its JSON is checked below
            parts.append(part)
            rows.append(row)
        # depth diffs (most of the bytes) are decoded by polars in one call; the rest, and any
        # chunk polars refuses, by the json module
        is_depth = [b'"depthUpdate"' in part[:96] for part in parts]
        if any(is_depth):
            dparts = [x for x, d in zip(parts, is_depth, strict=True) if d]
            drows = [r for r, d in zip(rows, is_depth, strict=True) if d]
            if self.depth_bulk(dparts, drows, ck):
                parts = [x for x, d in zip(parts, is_depth, strict=True) if not d]
                rows = [r for r, d in zip(rows, is_depth, strict=True) if not d]
        # one decoder call per chunk; a bad line makes it fail, then lines are parsed one by one
        # to name the row
        objs = None
        try:
            objs = json.loads(b"[" + b",".join(parts) + b"]")
            if len(objs) != len(parts):
                objs = None
        except ValueError:
            objs = None
        if objs is None:
            objs = []
            for r, part in zip(rows, parts, strict=True):
                try:
                    objs.append(_JSON.decode(part.decode()))
                except ValueError as exc:
                    objs.append(None)
                    self.bad("bad_json", f"not valid JSON ({exc}); the line may be truncated", r)
        for r, obj in zip(rows, objs, strict=True):
            if obj is not None:
                self.parse_obj(obj, r, ck)
        ck.msgs.sort(key=lambda m: m[1])  # back into file order
        return row

    def depth_bulk(self, parts: list[bytes], rows: list[int], ck: Chunk) -> bool:
        """Decode depthUpdate lines with polars into ``ck``; False (nothing added) if any line
        is malformed, so the line-by-line path can name it."""
        try:
            raw = pl.Series(parts, dtype=pl.Binary).cast(pl.Utf8)
            df = raw.str.json_decode(_DEPTH_SCHEMA).struct.field("data").struct.unnest()
        except (pl.exceptions.PolarsError, ValueError, TypeError):
            return False
        if (
            df.select(pl.any_horizontal(pl.col("E", "s", "U", "u", "b", "a").is_null()))
            .to_series()
            .any()
        ):
            return False
        nb = df["b"].list.len().to_numpy().astype(np.int64)
        na = df["a"].list.len().to_numpy().astype(np.int64)
        total = nb + na
        lv = df.select(pl.concat_list("b", "a").alias("lv"))["lv"].explode().drop_nulls()
        if len(lv) != int(total.sum()) or not (lv.list.len() == 2).all():
            return False
        base = len(ck.px)
        ck.px.extend(lv.list.get(0).to_list())
        ck.qty.extend(lv.list.get(1).to_list())
        ends = np.cumsum(total)
        starts = ends - total
        side = np.full(int(total.sum()), SIDE_ASK, np.int64)
        nbt = int(nb.sum())
        side[np.repeat(starts, nb) + np.arange(nbt) - np.repeat(np.cumsum(nb) - nb, nb)] = SIDE_BID
        ck.side.extend(side.tolist())
        pu = df["pu"]
        futures = pu.is_not_null().to_numpy()
        ts = (
            np.where(
                futures & df["T"].is_not_null().to_numpy(),
                df["T"].fill_null(0).to_numpy(),
                df["E"].to_numpy(),
            )
            * 1_000_000
        )
        keys = {}
        for sym, fut in zip(df["s"].to_list(), futures.tolist(), strict=True):
            if (sym, fut) not in keys:
                keys[sym, fut] = self.key_for(sym, fut)
        key_list = [keys[k] for k in zip(df["s"].to_list(), futures.tolist(), strict=True)]
        for m in zip(
            rows,
            key_list,
            ts.tolist(),
            df["U"].to_list(),
            df["u"].to_list(),
            pu.fill_null(-1).to_list(),
            (starts + base).tolist(),
            (ends + base).tolist(),
            strict=True,
        ):
            ck.msgs.append((DEPTH, *m))
        self.last_depth_key = key_list[-1]
        return True

    def parse_obj(self, obj: object, row: int, ck: Chunk) -> None:
        if not isinstance(obj, dict):
            self.bad("bad_json", f"expected a JSON object, found {type(obj).__name__}", row)
            return
        if "channel" in obj:
            self.hyperliquid.parse(obj, row, ck)
            return
        data = obj.get("data", obj)
        try:
            if "lastUpdateId" in data:
                futures = "E" in data or "T" in data
                sym = data.get("symbol") or (
                    self.last_depth_key.split(":", 1)[1]
                    if self.last_depth_key
                    else self.file_symbol
                )
                key = self.key_for(sym, futures)
                ts = int(data.get("T") or data.get("E") or 0) * 1_000_000
                lid = int(data["lastUpdateId"])
                s = len(ck.px)
                ck.add_levels(data["bids"], SIDE_BID)
                ck.add_levels(data["asks"], SIDE_ASK)
                ck.msgs.append((SNAP, row, key, ts, lid, lid, lid, s, len(ck.px)))
                return
            e = data.get("e")
            if e == "depthUpdate":
                futures = "pu" in data
                key = self.key_for(data["s"], futures)
                self.last_depth_key = key
                ts = int(data["T"] if futures and "T" in data else data["E"]) * 1_000_000
                s = len(ck.px)
                ck.add_levels(data["b"], SIDE_BID)
                ck.add_levels(data["a"], SIDE_ASK)
                ck.msgs.append(
                    (
                        DEPTH,
                        row,
                        key,
                        ts,
                        int(data["U"]),
                        int(data["u"]),
                        int(data.get("pu", -1)),
                        s,
                        len(ck.px),
                    )
                )
                return
            if e in ("trade", "aggTrade"):
                key = self.key_for(data["s"], "M" not in data)
                ts = int(data["T"]) * 1_000_000
                m = data["m"]
                if not isinstance(m, bool):
                    self.bad("bad_side", f"trade 'm' must be true or false, found {m!r}", row)
                    return
                s = len(ck.px)
                ck.px.append(data["p"])
                ck.qty.append(data["q"])
                ck.side.append(SIDE_ASK if m else SIDE_BID)
                ck.msgs.append((TRADE, row, key, ts, 0, 0, 0, s, s + 1))
                return
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            self.bad(
                "bad_record",
                f"{e or 'message'} is missing or has a malformed field "
                f"({exc!r}); expected Binance's documented message layout",
                row,
            )
            return
        # bookTicker and anything else (subscription acks): not part of the book
        self.stats.ignored += 1

    # -- CSV ------------------------------------------------------------------------------
    def csv_chunks(self) -> Iterator[np.ndarray]:
        # said before the rows are read (skipping, the short row is a bad record like others)
        problem = _files.last_line_problem(self.path, len(_CSV_SCHEMA))
        if problem and not self.skip_bad:
            raise DataError(self.path, problem)
        lf = pl.scan_csv(self.path, schema=_CSV_SCHEMA, has_header=True)
        carry: pl.DataFrame | None = None
        row0 = 1  # file row of the first data row of the next frame (header is row 1)
        try:
            batches = lf.collect_batches(chunk_size=_CSV_BATCH)
            for df in batches:
                if carry is not None:
                    df = pl.concat([carry, df])
                # hold back the last message: it may continue in the next batch
                ids = df["last_update_id"].to_numpy()
                cut = len(ids)
                while cut > 0 and ids[cut - 1] == ids[-1]:
                    cut -= 1
                if cut == 0:
                    carry = df
                    continue
                carry = df[cut:]
                yield self.process(self.csv_frame(df[:cut], row0))
                row0 += cut
        except pl.exceptions.PolarsError as exc:
            self.bad(
                "bad_record",
                f"not a valid depth CSV ({_files.polars_problem(exc)}); expected columns "
                f"{_CSV_HEADER} with integer ids and timestamps",
                row0,
            )
            return
        if carry is not None and len(carry):
            yield self.process(self.csv_frame(carry, row0))

    def csv_frame(self, df: pl.DataFrame, row0: int) -> Chunk:
        ck = Chunk()
        n = len(df)
        if n == 0:
            return ck
        side_s = df["side"].to_numpy()
        side = np.full(n, 255, np.int64)
        side[side_s == "b"] = SIDE_BID
        side[side_s == "a"] = SIDE_ASK
        typ = df["update_type"].to_numpy()
        for i in np.flatnonzero(side == 255)[:1]:
            # a missing side is most often a row cut short (a truncated file's last line)
            found = "nothing (a short row?)" if side_s[i] is None else repr(side_s[i])
            self.bad("bad_side", f"side must be 'a' or 'b', found {found}", row0 + 1 + int(i))
        good_typ = (typ == "snap") | (typ == "set")
        for i in np.flatnonzero(~good_typ)[:1]:
            self.bad(
                "bad_record",
                f"update_type must be 'snap' or 'set', found {typ[i]!r}",
                row0 + 1 + int(i),
            )
        keep = (side != 255) & good_typ
        nulls = df.select(pl.any_horizontal(pl.all().is_null())).to_series().to_numpy()
        for i in np.flatnonzero(nulls & keep)[:1]:
            self.bad("bad_record", "empty field; every column must be filled", row0 + 1 + int(i))
        keep &= ~nulls
        if not keep.all():
            extra = int((~keep).sum()) - 1
            if self.skip_bad and extra > 0:
                self.defects.add("bad_record", f"{self.path} row {row0 + 1}", extra)
        idx = np.flatnonzero(keep)
        ck.px = df["price"].to_numpy()[idx].tolist()
        ck.qty = df["qty"].to_numpy()[idx].tolist()
        ck.side = side[idx].tolist()
        sym = df["symbol"].to_numpy()[idx]
        ts = df["timestamp"].to_numpy()[idx] * 1_000_000
        fu = df["first_update_id"].to_numpy()[idx]
        lu = df["last_update_id"].to_numpy()[idx]
        pu = df["pu"].to_numpy()[idx]
        snap = typ[idx] == "snap"
        m = len(idx)
        if m == 0:
            return ck
        # a message is a run of rows with the same (symbol, last_update_id, update_type)
        brk = np.ones(m, bool)
        brk[1:] = (lu[1:] != lu[:-1]) | (sym[1:] != sym[:-1]) | (snap[1:] != snap[:-1])
        starts = np.flatnonzero(brk)
        ends = np.append(starts[1:], m)
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            key = self.key_for(str(sym[s]), True)
            self.last_depth_key = key
            kind = SNAP if snap[s] else DEPTH
            ck.msgs.append(
                (
                    kind,
                    row0 + 1 + int(idx[s]),
                    key,
                    int(ts[s]),
                    int(fu[s]),
                    int(lu[s]),
                    int(pu[s]),
                    s,
                    e,
                )
            )
        return ck
