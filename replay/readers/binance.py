"""Binance depth data: hftbacktest recordings (``<local_ts_ns> <json>`` lines) and depth CSVs.

Recordings (gzip or plain text, one websocket message per line) hold ``depthUpdate`` diffs,
the REST snapshot line (``lastUpdateId``), ``trade`` / ``aggTrade`` prints and ``bookTicker``
lines (ignored, counted in the log). Binance's historical futures depth CSVs
(``symbol,timestamp,first_update_id,last_update_id,side,update_type,price,qty,pu``) hold
``snap`` rows (a snapshot) and ``set`` rows (diffs); both go through the same state machine.

What is emitted, per instrument:

- A snapshot becomes ``ACTION_CLEAR`` + one ``ACTION_UPDATE`` per level, all ``FLAG_SNAPSHOT``,
  the last with ``FLAG_LAST``. Each applied diff message becomes one update per level, the last
  with ``FLAG_LAST``. Trades are ``ACTION_TRADE`` with ``seq`` 0 and no flags; their ``side`` is
  the aggressor's (``SIDE_BID`` = buyer-initiated, i.e. ``m`` false).
- Update-id sync (Binance's rules): spot drops diffs with ``u <= lastUpdateId``, the first kept
  one must have ``U <= lastUpdateId + 1 <= u`` and then ``U == previous u + 1``; futures drop
  ``u < lastUpdateId``, need ``U <= lastUpdateId <= u`` first and then ``pu == previous u``.
  Diffs recorded before the snapshot line are buffered and replayed after it under those rules.
- ``seq`` is a per-instrument counter, contiguous while the id chain holds. A broken chain skips
  one number (a gap), so the book kernel marks the instrument stale until the next snapshot;
  the diffs after the break are still emitted (and counted in the log).
- Diffs for an instrument that has never had a snapshot are not emitted (their count is
  logged). Files read one after the other with the same registry chain: the sync state is
  kept per registry, so ``btcusdt_20240808.gz`` then ``btcusdt_20240809.gz`` (which has no
  snapshot) continue the same book. A file read alone without a snapshot yields trades only.
- ``ts_event``: futures diffs use ``T`` (transaction time), spot diffs ``E``; trades ``T``; a
  snapshot without a time (spot REST) takes the newest exchange time seen for the instrument.
  Times are clamped to be non-decreasing per instrument (trades and depth come from separate
  streams); clamps are counted in the log. ``ts_recv`` is 0: the recorder's clock is wall time,
  not this host's monotonic clock.
- Decoding: ``depthUpdate`` lines (most of the bytes) are decoded in bulk by polars under an
  explicit schema, the other lines by the json module, one call per block of about 1 MiB of
  compressed input; a block with a malformed line falls back to line-by-line decoding, which
  names the row. Gzip is inflated here block by block, so every whole line before a truncation
  is read and memory stays flat (about 310 MiB peak RSS for one USD-M file and for ten).
- The same recorder's Hyperliquid files (``{"channel": "l2Book" | "trades", ...}``) are read
  too: each ``l2Book`` is a full 20-level book, emitted as a snapshot (CLEAR + levels); trades
  are deduplicated by ``tid``; the instrument is ``hyperliquid:COIN``.
- Instruments are registered as ``binance:SYM`` (spot), ``binance-futures:SYM`` (USD-M) and
  ``binance-delivery:SYM`` (COIN-M); a registry entry under the plain symbol is used too. Without
  one, the tick is inferred as the coarsest grid holding every price of the first chunk
  (spot BTCUSDT: 0.01; futures: 0.1) and logged.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import weakref
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from lobstream.kernels.dtypes import (
    ACTION_CLEAR,
    ACTION_TRADE,
    ACTION_UPDATE,
    EVENT_DTYPE,
    FLAG_LAST,
    FLAG_SNAPSHOT,
    SIDE_ASK,
    SIDE_BID,
)
from lobstream.kernels.registry import Instrument, Registry
from lobstream.replay.errors import DataError, Defects
from lobstream.replay.readers import DEFAULT_BATCH_ROWS, _decimal

logger = logging.getLogger(__name__)

FORMAT = "binance"

SCALE = 8  # Binance sends at most 8 decimals
_CHUNK_BYTES = 1 << 20  # compressed bytes per block
_CSV_BATCH = 200_000
_MAX_PENDING = 20_000  # pre-snapshot diffs kept for replay after the snapshot
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

# message kinds
_DEPTH, _SNAP, _TRADE = 0, 1, 2


@dataclass
class _Chain:
    """Sync state of one instrument's update-id chain (kept across files of one registry)."""

    futures: bool
    synced: bool = False
    fresh: bool = False  # a snapshot was applied and no diff yet
    last_u: int = 0
    seq: int = 0
    last_ts: int = 0
    pending: deque = field(default_factory=lambda: deque(maxlen=_MAX_PENDING))


@dataclass
class _Stats:
    ignored: int = 0
    dropped_old: int = 0
    gaps: int = 0
    clamped: int = 0
    snapshots: int = 0


# Sync state per registry: reading files in order with one registry chains them.
_CHAINS: weakref.WeakKeyDictionary[Registry, dict[str, _Chain]] = weakref.WeakKeyDictionary()


def _chains(registry: Registry) -> dict[str, _Chain]:
    d = _CHAINS.get(registry)
    if d is None:
        d = {}
        _CHAINS[registry] = d
    return d


def detect(path: Path) -> bool:
    """A Binance recording (``<digits> {json}`` lines) or a Binance futures depth CSV."""
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


class _Chunk:
    """Messages and their levels, gathered in Python before one bulk numeric conversion."""

    def __init__(self) -> None:
        self.px: list[str] = []
        self.qty: list[str] = []
        self.side: list[int] = []
        self.ticks = self.size = self.sides = np.zeros(0, np.int64)
        # per message: kind, row, key, ts_ns, U, u, pu, lv_start, lv_end
        self.msgs: list[tuple] = []

    def add_levels(self, levels: list, side: int) -> None:
        if not levels:
            return
        try:
            px, qty = zip(*levels, strict=True)
        except (TypeError, ValueError):
            raise ValueError("each level must be a [price, quantity] pair") from None
        self.px.extend(px)
        self.qty.extend(qty)
        self.side.extend([side] * len(px))


class _Reader:
    def __init__(self, path: Path, registry: Registry, skip_bad: bool, defects: Defects):
        self.path = path
        self.registry = registry
        self.skip_bad = skip_bad
        self.defects = defects
        self.chains = _chains(registry)
        self.stats = _Stats()
        self.file_symbol = _symbol_from_name(path)
        self.last_depth_key: str | None = None
        self.units: dict[str, int] = {}
        self.seen_tids: set = set()
        self.tid_order: deque = deque()
        self.inst: dict[str, Instrument] = {}

    # -- errors ---------------------------------------------------------------------------
    def bad(self, kind: str, problem: str, row: int) -> None:
        """Raise, or count the defect when skipping."""
        if not self.skip_bad:
            raise DataError(self.path, problem, row=row)
        self.defects.add(kind, f"{self.path} row {row}")

    # -- market and instrument -----------------------------------------------------------
    def key_for(self, symbol: str, futures: bool) -> str:
        venue = (
            "binance-delivery" if "_" in symbol else ("binance-futures" if futures else "binance")
        )
        key = f"{venue}:{symbol}"
        if key not in self.chains:
            self.chains[key] = _Chain(futures=futures or "_" in symbol)
        return key

    def instrument(self, key: str, max_dec: int) -> Instrument:
        inst = self.inst.get(key)
        if inst is not None:
            return inst
        plain = key.split(":", 1)[1]
        if key in self.registry:
            inst = self.registry.by_symbol(key)
        elif plain in self.registry:
            inst = self.registry.by_symbol(plain)
        else:
            tick = _decimal.infer_tick(max_dec)
            inst = self.registry.add(key, tick)
            logger.info(
                "%s: %s not in the registry; tick size %s inferred from the data (add it to the "
                "registry to set it)",
                self.path,
                key,
                tick,
            )
        self.units[key] = _decimal.tick_units(inst.tick_size, SCALE)
        self.inst[key] = inst
        return inst

    # -- JSON lines -----------------------------------------------------------------------
    def json_chunks(self) -> Iterator[np.ndarray]:
        row = 0
        for lines, problem in _line_blocks(self.path):
            if lines:
                chunk = _Chunk()
                row = self.parse_lines(lines, row, chunk)
                yield self.process(chunk)
            if problem:
                self.bad(
                    "truncated_file",
                    f"{problem} after row {row}; expected a complete gzip file: re-download it",
                    row + 1,
                )
                return

    def parse_lines(self, lines: list[bytes], row: int, ck: _Chunk) -> int:
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
            parts.append(line[sp + 1 :].rstrip())
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

    def depth_bulk(self, parts: list[bytes], rows: list[int], ck: _Chunk) -> bool:
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
            ck.msgs.append((_DEPTH, *m))
        self.last_depth_key = key_list[-1]
        return True

    def parse_obj(self, obj: object, row: int, ck: _Chunk) -> None:
        if not isinstance(obj, dict):
            self.bad("bad_json", f"expected a JSON object, found {type(obj).__name__}", row)
            return
        if "channel" in obj:
            self.parse_hyperliquid(obj, row, ck)
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
                ck.msgs.append((_SNAP, row, key, ts, lid, lid, lid, s, len(ck.px)))
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
                        _DEPTH,
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
                ck.msgs.append((_TRADE, row, key, ts, 0, 0, 0, s, s + 1))
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

    def parse_hyperliquid(self, obj: dict, row: int, ck: _Chunk) -> None:
        """Hyperliquid lines of the same recorder: ``l2Book`` (a full book each time, emitted
        as a snapshot) and ``trades`` (deduplicated by trade id: the recorder repeats some)."""
        channel = obj.get("channel")
        try:
            if channel == "l2Book":
                d = obj["data"]
                key = self.key_hl(d["coin"])
                bids, asks = d["levels"]
                s = len(ck.px)
                ck.add_levels([(lv["px"], lv["sz"]) for lv in bids], SIDE_BID)
                ck.add_levels([(lv["px"], lv["sz"]) for lv in asks], SIDE_ASK)
                ts = int(d["time"]) * 1_000_000
                ck.msgs.append((_SNAP, row, key, ts, 0, 0, 0, s, len(ck.px)))
            elif channel == "trades":
                for t in obj["data"]:
                    if t["tid"] in self.seen_tids:
                        continue
                    self.seen_tids.add(t["tid"])
                    self.tid_order.append(t["tid"])
                    if len(self.tid_order) > _MAX_PENDING:
                        self.seen_tids.discard(self.tid_order.popleft())
                    side = {"B": SIDE_BID, "A": SIDE_ASK}.get(t["side"])
                    if side is None:
                        self.bad("bad_side", f"trade side {t['side']!r}; expected B or A", row)
                        continue
                    s = len(ck.px)
                    ck.px.append(t["px"])
                    ck.qty.append(t["sz"])
                    ck.side.append(side)
                    ts = int(t["time"]) * 1_000_000
                    ck.msgs.append((_TRADE, row, self.key_hl(t["coin"]), ts, 0, 0, 0, s, s + 1))
            else:
                self.stats.ignored += 1
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            self.bad(
                "bad_record",
                f"{channel} message is missing or has a malformed field "
                f"({exc!r}); expected the Hyperliquid websocket layout",
                row,
            )

    def key_hl(self, coin: str) -> str:
        key = f"hyperliquid:{coin}"
        if key not in self.chains:
            self.chains[key] = _Chain(futures=True)
        return key

    # -- CSV ------------------------------------------------------------------------------
    def csv_chunks(self) -> Iterator[np.ndarray]:
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
                f"not a valid depth CSV ({exc}); expected columns "
                f"{_CSV_HEADER} with integer ids and timestamps",
                row0,
            )
            return
        if carry is not None and len(carry):
            yield self.process(self.csv_frame(carry, row0))

    def csv_frame(self, df: pl.DataFrame, row0: int) -> _Chunk:
        ck = _Chunk()
        n = len(df)
        if n == 0:
            return ck
        side_s = df["side"].to_numpy()
        side = np.full(n, 255, np.int64)
        side[side_s == "b"] = SIDE_BID
        side[side_s == "a"] = SIDE_ASK
        typ = df["update_type"].to_numpy()
        for i in np.flatnonzero(side == 255)[:1]:
            self.bad("bad_side", f"side must be 'a' or 'b', found {side_s[i]!r}", row0 + 1 + int(i))
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
            kind = _SNAP if snap[s] else _DEPTH
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

    # -- numbers, sync and events ---------------------------------------------------------
    def process(self, ck: _Chunk) -> np.ndarray:
        if not ck.msgs:
            return np.zeros(0, EVENT_DTYPE)
        pxv, pst, _ = (
            _decimal.parse_fixed(ck.px, SCALE)
            if ck.px
            else (np.zeros(0, np.int64), np.zeros(0, np.uint8), 0)
        )
        qv, qst, _ = (
            _decimal.parse_fixed(ck.qty, SCALE)
            if ck.qty
            else (np.zeros(0, np.int64), np.zeros(0, np.uint8), 0)
        )
        lv_bad = (pst != _decimal.OK) | (qst != _decimal.OK) | (pxv <= 0) | (qv < 0)
        side = np.asarray(ck.side, np.int64)
        lv_bad |= side > 1
        # per-level message index, to find bad messages and group tick inference
        bad_msgs = set()
        if lv_bad.any():
            msg_of = _msg_of(ck)
            for j in np.flatnonzero(lv_bad):
                mi = int(msg_of[j])
                if mi in bad_msgs:
                    continue
                bad_msgs.add(mi)
                self.bad(
                    *self._level_problem(ck, j, pst[j], qst[j], pxv[j], qv[j], side[j]),
                    ck.msgs[mi][1],
                )
        # tick size per instrument: registry, or inferred from this chunk's prices
        for key in {m[2] for m in ck.msgs} - set(self.inst):
            sel = np.zeros(len(ck.px), bool)
            for mi, m in enumerate(ck.msgs):
                if m[2] == key and mi not in bad_msgs:
                    sel[m[7] : m[8]] = True
            self.instrument(key, _decimal.max_decimals(pxv[sel & ~lv_bad], SCALE, SCALE))
        # ticks (per level, with its instrument's tick)
        units = np.ones(len(ck.px), np.int64)
        for m in ck.msgs:
            units[m[7] : m[8]] = self.units[m[2]]
        ticks = pxv // units
        off_grid = (ticks * units != pxv) & ~lv_bad
        if off_grid.any():
            msg_of = _msg_of(ck)
            for j in np.flatnonzero(off_grid):
                mi = int(msg_of[j])
                if mi in bad_msgs:
                    continue
                bad_msgs.add(mi)
                key = ck.msgs[mi][2]
                self.bad(
                    "off_tick_price",
                    f"price {ck.px[j]} is not a multiple of the tick "
                    f"size {self.inst[key].tick_size} of {key}; set tick_size for it in the "
                    "instrument registry",
                    ck.msgs[mi][1],
                )
        # kept on the chunk: diffs buffered before a later snapshot are emitted from it
        ck.ticks, ck.size, ck.sides = ticks, _decimal.fixed_to_float(qv, SCALE), side
        return self.emit(self.sync(ck, bad_msgs))

    @staticmethod
    def _level_problem(ck, j, pst, qst, px, q, side):
        if side > 1:
            return "bad_side", f"unknown side code {side}; expected bid or ask"
        if pst != _decimal.OK:
            return "bad_price", (
                f"price {ck.px[j]!r} is {_decimal.STATUS_NAMES[pst]}; expected "
                f"a decimal string with at most {SCALE} decimals"
            )
        if qst != _decimal.OK:
            return "bad_quantity", (
                f"quantity {ck.qty[j]!r} is {_decimal.STATUS_NAMES[qst]}; "
                f"expected a decimal string with at most {SCALE} decimals"
            )
        if px <= 0:
            return "non_positive_price", f"price {ck.px[j]} is not positive"
        return "negative_quantity", f"quantity {ck.qty[j]} is negative; expected >= 0"

    def sync(self, ck: _Chunk, bad_msgs: set) -> list[tuple]:
        """Apply the update-id rules; returns pieces (action, msg, seq0, ts, flags, key, chunk)."""
        plan: list[tuple] = []
        for mi, m in enumerate(ck.msgs):
            if mi in bad_msgs:
                continue
            kind, key = m[0], m[2]
            ch = self.chains[key]
            if kind == _TRADE:
                plan.append((ACTION_TRADE, mi, 0, self.stamp(ch, m[3]), 0, key, ck))
            elif kind == _SNAP:
                self.snapshot(ch, ck, mi, m, plan)
            elif not ch.synced:
                ch.pending.append((ck, mi))
            else:
                self.diff(ch, ck, mi, m, plan)
        return plan

    def stamp(self, ch: _Chain, ts: int) -> int:
        if ts < ch.last_ts:
            self.stats.clamped += 1
            return ch.last_ts
        ch.last_ts = ts
        return ts

    def snapshot(self, ch: _Chain, ck: _Chunk, mi: int, m: tuple, plan: list) -> None:
        ts = self.stamp(ch, m[3] if m[3] else ch.last_ts)
        n = m[8] - m[7]
        ch.seq += 1
        plan.append(
            (ACTION_CLEAR, -1, ch.seq, ts, FLAG_SNAPSHOT | (0 if n else FLAG_LAST), m[2], ck)
        )
        if n:
            plan.append((ACTION_UPDATE, mi, ch.seq + 1, ts, FLAG_SNAPSHOT, m[2], ck))
            ch.seq += n
        ch.synced, ch.fresh, ch.last_u = True, True, m[5]
        self.stats.snapshots += 1
        # diffs recorded before the snapshot line may straddle lastUpdateId: replay them
        pending, ch.pending = list(ch.pending), deque(maxlen=_MAX_PENDING)
        for pck, pmi in pending:
            self.diff(ch, pck, pmi, pck.msgs[pmi], plan)

    def diff(self, ch: _Chain, ck: _Chunk, mi: int, m: tuple, plan: list) -> None:
        U, u, pu = m[4], m[5], m[6]
        L = ch.last_u
        if ch.fresh:
            if (u < L) if ch.futures else (u <= L):
                self.stats.dropped_old += 1
                return
            ok = (U <= L <= u) if ch.futures else (U <= L + 1 <= u)
        else:
            if u <= L:
                self.stats.dropped_old += 1
                return
            ok = (pu == L) if ch.futures else (U == L + 1)
        if not ok:
            self.stats.gaps += 1
            ch.seq += 1  # skip one number: the book kernel sees the gap and marks it stale
            logger.debug(
                "%s row %s: %s update-id chain broken (previous u %s, U %s u %s pu %s)",
                self.path,
                m[1],
                m[2],
                L,
                U,
                u,
                pu,
            )
        ch.fresh = False
        ch.last_u = u
        n = m[8] - m[7]
        ts = self.stamp(ch, m[3])
        if n:
            plan.append((ACTION_UPDATE, mi, ch.seq + 1, ts, 0, m[2], ck))
            ch.seq += n

    def emit(self, plan: list) -> np.ndarray:
        """Events of the planned pieces, built with whole-array operations (no loop per level).

        A piece is (action, message index or -1 for a clear, first seq, ts, flags, instrument
        key, chunk holding its levels): a clear is one event, other pieces one per level.
        """
        n_p = len(plan)
        if n_p == 0:
            return np.zeros(0, EVENT_DTYPE)
        # the levels of every chunk the plan refers to, end to end (usually only this one)
        chunks: dict[int, int] = {}
        parts = []
        base = 0
        for p in plan:
            if id(p[6]) not in chunks:
                chunks[id(p[6])] = base
                parts.append(p[6])
                base += len(p[6].ticks)
        ticks = np.concatenate([c.ticks for c in parts]) if len(parts) > 1 else parts[0].ticks
        size = np.concatenate([c.size for c in parts]) if len(parts) > 1 else parts[0].size
        sides = np.concatenate([c.sides for c in parts]) if len(parts) > 1 else parts[0].sides
        if ticks.size == 0:  # only clears (snapshots without levels): nothing to gather
            ticks, size, sides = np.zeros(1, np.int64), np.zeros(1), np.zeros(1, np.int64)
        ids = {key: inst.id for key, inst in self.inst.items()}
        act = np.fromiter((p[0] for p in plan), np.uint8, n_p)
        seq0 = np.fromiter((p[2] for p in plan), np.int64, n_p)
        ts = np.fromiter((p[3] for p in plan), np.int64, n_p)
        flags = np.fromiter((p[4] for p in plan), np.uint8, n_p)
        inst = np.fromiter((ids[p[5]] for p in plan), np.uint32, n_p)
        lo = np.fromiter(
            (chunks[id(p[6])] + p[6].msgs[p[1]][7] if p[1] >= 0 else 0 for p in plan), np.int64, n_p
        )
        cnt = np.fromiter(
            (p[6].msgs[p[1]][8] - p[6].msgs[p[1]][7] if p[1] >= 0 else 1 for p in plan),
            np.int64,
            n_p,
        )
        ends = np.cumsum(cnt)
        piece = np.repeat(np.arange(n_p), cnt)
        within = np.arange(int(ends[-1])) - np.repeat(ends - cnt, cnt)
        src = np.repeat(lo, cnt) + within
        a = act[piece]
        clear = a == ACTION_CLEAR
        trade = a == ACTION_TRADE
        out = np.zeros(len(piece), EVENT_DTYPE)
        out["ts_event"] = ts[piece]
        out["instrument"] = inst[piece]
        out["action"] = a
        out["price"] = np.where(clear, 0, ticks[src])
        out["size"] = np.where(clear, 0.0, size[src])
        out["side"] = np.where(clear, 0, sides[src])
        out["seq"] = np.where(trade, 0, seq0[piece] + within).astype(np.uint64)
        fl = np.where(trade, 0, flags[piece]).astype(np.uint8)
        upd_end = ends[act == ACTION_UPDATE] - 1
        fl[upd_end] |= FLAG_LAST
        out["flags"] = fl
        return out

    def finish(self) -> None:
        st = self.stats
        waiting = sum(len(c.pending) for c in self.chains.values())
        logger.info(
            "%s: %d snapshots, %d diffs dropped as older than the snapshot, %d chain breaks, "
            "%d times clamped, %d other lines ignored (bookTicker etc.)",
            self.path,
            st.snapshots,
            st.dropped_old,
            st.gaps,
            st.clamped,
            st.ignored,
        )
        if waiting:
            logger.warning(
                "%s: %d diffs wait for a snapshot and were not emitted; read the "
                "file that holds the snapshot first, in the same call",
                self.path,
                waiting,
            )
        if st.gaps:
            logger.warning(
                "%s: %d update-id chain breaks; the book is stale after each until a snapshot",
                self.path,
                st.gaps,
            )


def _msg_of(ck: _Chunk) -> np.ndarray:
    """Message index of every level of ``ck`` (levels are not in message order: the bulk
    depth path adds its block first)."""
    out = np.full(len(ck.px), -1, np.int64)
    for mi, m in enumerate(ck.msgs):
        out[m[7] : m[8]] = mi
    return out


def _line_blocks(path: Path) -> Iterator[tuple[list[bytes], str]]:
    """Whole lines in blocks of about ``_CHUNK_BYTES`` compressed bytes, and a problem text
    ("" if none) once the stream turns out truncated or corrupt.

    Decompression is done here (not by ``gzip.open``) so that every complete line before a
    truncation is still delivered and the error can name the row after it.
    """
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
        fh.seek(0)
        dec = zlib.decompressobj(16 + zlib.MAX_WBITS) if gz else None
        tail = b""
        offset = 0
        while True:
            block = fh.read(_CHUNK_BYTES)
            if not block:
                break
            offset += len(block)
            if dec is None:
                data = block
            else:
                try:
                    data = dec.decompress(block)
                    # concatenated gzip members: start a new decompressor on what is left
                    while dec.eof and dec.unused_data:
                        rest = dec.unused_data
                        dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
                        data += dec.decompress(rest)
                except zlib.error as exc:
                    yield [], f"corrupt gzip data before byte {offset} ({exc})"
                    return
            data = tail + data
            cut = data.rfind(b"\n") + 1
            tail = data[cut:]
            yield data[:cut].splitlines(keepends=True), ""
        if dec is not None and not dec.eof:
            yield [], f"the gzip stream ends early at byte {offset} (truncated file)"
            return
        if tail:
            yield [tail], ""
