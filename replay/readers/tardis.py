"""Tardis.dev CSV: ``incremental_book_L2`` and ``book_snapshot_N`` (plain or gzip).

incremental_book_L2 (``exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount``):
each row sets the absolute size at a price (0 deletes). A run of ``is_snapshot=true`` rows is a
full book: it starts with ``ACTION_CLEAR`` and its rows carry ``FLAG_SNAPSHOT``; a later run of
``true`` rows (after ``false`` ones) is a fresh snapshot and clears again. Rows with the same
symbol and timestamp (and snapshot state) form one group whose last event carries ``FLAG_LAST``.

book_snapshot_N (``...,asks[0].price,asks[0].amount,bids[0].price,bids[0].amount,...``): each
row is a full top-N book. It is emitted as the updates from the previous row's book (levels that
left the top N are deleted, new or changed ones set), via
:func:`lobstream.replay.readers._mbo.levels_to_events`; the first row of a symbol is ``ACTION_CLEAR`` +
the full book as a snapshot. Every row ends with ``FLAG_LAST``. Diffs keep the stream small and
make the book equal to each row; a consumer that joins mid-file still needs a snapshot.

``timestamp`` (exchange time, microseconds) becomes ``ts_event`` in ns; ``ts_recv`` is 0.
Instruments are ``exchange:symbol`` (e.g. ``deribit:BTC-PERPETUAL``), or the plain symbol if
the registry has it; without either the tick is inferred as the coarsest decimal grid holding
every price of the first batch, and logged (Deribit's real tick, 0.5, is coarser than what the
decimals show: set it in the registry to get ticks of 0.5). ``seq`` is a per-instrument counter
over book events, contiguous. Prices and amounts are parsed exactly from their decimal text.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

from lobstream.kernels.dtypes import (
    ACTION_CLEAR,
    ACTION_UPDATE,
    EVENT_DTYPE,
    FLAG_LAST,
    FLAG_SNAPSHOT,
    SIDE_ASK,
    SIDE_BID,
)
from lobstream.kernels.registry import Instrument, Registry
from lobstream.replay.errors import DataError, Defects
from lobstream.replay.readers import DEFAULT_BATCH_ROWS, _decimal, _files
from lobstream.replay.readers import _mbo as levels_kernel
from lobstream.replay.readers._decimal import EMPTY, OK

logger = logging.getLogger(__name__)

FORMAT = "tardis"

SCALE = 9
_BATCH = 200_000
_BASE = "exchange,symbol,timestamp,local_timestamp,"
_INCREMENTAL = _BASE + "is_snapshot,side,price,amount"


def _header(path: Path) -> str:
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    try:
        with opener(path, "rb") as fh:
            return fh.readline().decode("ascii", "replace").strip()
    except (OSError, EOFError):
        return ""


def detect(path: Path) -> bool:
    """A Tardis incremental_book_L2 or book_snapshot_N CSV (by its header)."""
    try:
        head = _header(Path(path))
    except OSError:
        return False
    return head == _INCREMENTAL or head.startswith(_BASE + "asks[0].price,asks[0].amount")


def read(
    path: Path,
    registry: Registry,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    skip_bad: bool = False,
    defects: Defects | None = None,
) -> Iterator[np.ndarray]:
    """Event batches (EVENT_DTYPE, at most ``batch_rows`` events each) from one Tardis CSV.

    Raises
    ------
    DataError
        A malformed row (non-numeric or non-positive price, negative amount, unknown side or
        is_snapshot value, bad timestamp, wrong column count) names the file and row; with
        ``skip_bad`` the row is skipped and counted by kind in ``defects``.
    """
    path = Path(path)
    defects = Defects() if defects is None else defects
    problem = _files.empty_problem(path)  # gzip or not is told by the bytes, not the name
    if problem:
        raise DataError(path, problem)
    head = _header(path)
    rd = _Reader(path, registry, skip_bad, defects)
    if head == _INCREMENTAL:
        src = rd.incremental()
    elif head.startswith(_BASE + "asks[0].price"):
        src = rd.snapshots(head.split(","))
    else:
        raise DataError(
            path,
            f"header {_files.show_line(head)} is not a Tardis incremental_book_L2 or "
            "book_snapshot_N CSV",
            row=1,
        )
    for events in src:
        for start in range(0, len(events), batch_rows):
            yield events[start : start + batch_rows]


class _Reader:
    def __init__(self, path: Path, registry: Registry, skip_bad: bool, defects: Defects):
        self.path = path
        self.registry = registry
        self.skip_bad = skip_bad
        self.defects = defects
        self.inst: dict[str, Instrument] = {}
        self.units: dict[int, int] = {}
        self.seq: dict[int, int] = {}
        self.in_snap: dict[int, bool] = {}

    def bad(self, kind: str, problem: str, row: int) -> None:
        if not self.skip_bad:
            raise DataError(self.path, problem, row=row)
        self.defects.add(kind, f"{self.path} row {row}")

    def flag_rows(self, mask: np.ndarray, kind: str, problem, row0: int) -> None:
        """Raise for the first row in ``mask`` (or count them all when skipping)."""
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            return
        self.bad(kind, problem(int(idx[0])), row0 + int(idx[0]))
        if len(idx) > 1:
            self.defects.add(kind, f"{self.path} row {row0 + int(idx[1])}", len(idx) - 1)

    def instrument(self, exchange: str, symbol: str, prices: np.ndarray) -> Instrument:
        key = f"{exchange}:{symbol}"
        inst = self.inst.get(key)
        if inst is not None:
            return inst
        if key in self.registry:
            inst = self.registry.by_symbol(key)
        elif symbol in self.registry:
            inst = self.registry.by_symbol(symbol)
        else:
            dec = _decimal.max_decimals(prices[prices > 0], SCALE, 2)
            inst = self.registry.add(key, _decimal.infer_tick(dec))
            logger.info(
                "%s: %s not in the registry; tick size %s inferred from the decimals of "
                "its prices (set it in the registry if the venue's tick is coarser)",
                self.path,
                key,
                inst.tick_size,
            )
        self.inst[key] = inst
        self.units[inst.id] = _decimal.tick_units(inst.tick_size, SCALE)
        return inst

    def frames(self, schema: dict) -> Iterator[tuple[pl.DataFrame, int]]:
        # a short last row would read as empty fields (absent levels, for a snapshot)
        problem = _files.last_line_problem(self.path, len(schema))
        if problem:
            if not self.skip_bad:
                raise DataError(self.path, problem)
            self.defects.add("truncated_file", f"{self.path} last line")
        lf = pl.scan_csv(self.path, schema=schema, has_header=True)
        row0 = 2
        held: pl.DataFrame | None = None  # one frame behind, so the last row can be dropped
        try:
            for df in lf.collect_batches(chunk_size=_BATCH):
                if held is not None:
                    yield held, row0
                    row0 += len(held)
                held = df
        except pl.exceptions.PolarsError as exc:
            self.bad(
                "bad_record",
                f"not a valid CSV row ({_files.polars_problem(exc)}); expected {len(schema)} "
                "comma-separated columns",
                row0 + (0 if held is None else len(held)),
            )
        except (OSError, EOFError) as exc:  # polars' gzip decoder: a truncated stream
            self.bad(
                "truncated_file",
                _files.gzip_read_problem(exc),
                row0 + (0 if held is None else len(held)),
            )
        if held is not None:
            yield (held[:-1] if problem else held), row0

    def timestamps(self, df: pl.DataFrame, row0: int) -> tuple[np.ndarray, np.ndarray]:
        ts = df["timestamp"].cast(pl.Int64, strict=False)
        bad = ts.is_null().to_numpy()
        raw = df["timestamp"].to_list()
        self.flag_rows(
            bad,
            "bad_timestamp",
            lambda j: f"timestamp {raw[j]!r} is not an integer number of microseconds",
            row0,
        )
        return ts.fill_null(0).to_numpy() * 1000, bad

    def ids(self, df: pl.DataFrame, prices: np.ndarray, ok: np.ndarray) -> np.ndarray:
        ex = df["exchange"].fill_null("").to_numpy()
        sym = df["symbol"].fill_null("").to_numpy()
        pair = np.char.add(np.char.add(ex.astype(str), "|"), sym.astype(str))
        uniq, inv = np.unique(pair, return_inverse=True)
        out = np.empty(len(uniq), np.uint32)
        for j, p in enumerate(uniq.tolist()):
            e, s = p.split("|", 1)
            sel = (inv == j) & ok
            out[j] = self.instrument(
                e, s, prices[sel] if prices.ndim == 1 else prices[sel].ravel()
            ).id
        return out[inv]

    # -- incremental_book_L2 --------------------------------------------------------------
    def incremental(self) -> Iterator[np.ndarray]:
        schema = dict.fromkeys(_INCREMENTAL.split(","), pl.Utf8)
        carry: pl.DataFrame | None = None
        carry_row = 2
        for df, row0 in self.frames(schema):
            if carry is not None:
                df, row0 = pl.concat([carry, df]), carry_row
            # hold back the last group: it may continue in the next batch
            key = df["symbol"].fill_null("") + "|" + df["timestamp"].fill_null("")
            key = key + "|" + df["is_snapshot"].fill_null("")
            k = key.to_numpy()
            cut = len(k)
            while cut > 0 and k[cut - 1] == k[-1]:
                cut -= 1
            if cut == 0:
                carry, carry_row = df, row0
                continue
            carry, carry_row = df[cut:], row0 + cut
            yield self.incremental_frame(df[:cut], row0)
        if carry is not None and len(carry):
            yield self.incremental_frame(carry, carry_row)

    def incremental_frame(self, df: pl.DataFrame, row0: int) -> np.ndarray:
        ts, bad = self.timestamps(df, row0)
        snap_s = df["is_snapshot"].fill_null("").to_numpy()
        snap = snap_s == "true"
        bad_snap = ~snap & (snap_s != "false") & ~bad
        self.flag_rows(
            bad_snap,
            "bad_record",
            lambda j: f"is_snapshot {snap_s[j]!r} must be true or false",
            row0,
        )
        bad |= bad_snap
        side_s = df["side"].fill_null("").to_numpy()
        side = np.where(side_s == "bid", SIDE_BID, np.where(side_s == "ask", SIDE_ASK, 255))
        bad_side = (side == 255) & ~bad
        self.flag_rows(
            bad_side, "bad_side", lambda j: f"side {side_s[j]!r} must be bid or ask", row0
        )
        bad |= bad_side
        px_s = df["price"].fill_null("").to_list()
        px, pst, _ = _decimal.parse_fixed(px_s, SCALE)
        bad_px = ((pst != OK) | (px <= 0)) & ~bad
        self.flag_rows(
            bad_px,
            "bad_price",
            lambda j: f"price {px_s[j]!r} is not a positive decimal with at most {SCALE} decimals",
            row0,
        )
        bad |= bad_px
        am_s = df["amount"].fill_null("").to_list()
        am, ast, _ = _decimal.parse_fixed(am_s, SCALE)
        bad_am = ((ast != OK) | (am < 0)) & ~bad
        self.flag_rows(
            bad_am, "bad_quantity", lambda j: f"amount {am_s[j]!r} is not a decimal >= 0", row0
        )
        bad |= bad_am
        keep = np.flatnonzero(~bad)
        if len(keep) == 0:
            return np.zeros(0, EVENT_DTYPE)
        inst = self.ids(df[keep], px[keep], np.ones(len(keep), bool))
        ts, snap, side, px, am = ts[keep], snap[keep], side[keep], px[keep], am[keep]
        units = np.array([self.units[i] for i in inst.tolist()], np.int64)
        ticks = px // units
        off = ticks * units != px
        full = np.zeros(len(df), bool)
        full[keep[off]] = True
        self.flag_rows(
            full,
            "off_tick_price",
            lambda j: (
                f"price {px_s[j]} is off the tick "
                "grid of its instrument; set tick_size in the registry"
            ),
            row0,
        )
        if off.any():
            ok = ~off
            inst, ts, snap, side, ticks, am = (a[ok] for a in (inst, ts, snap, side, ticks, am))
        n = len(ts)
        # snapshot starts (per instrument): a true row whose previous row of that instrument
        # was false (or none)
        start = np.zeros(n, bool)
        for i in np.unique(inst).tolist():
            sel = np.flatnonzero(inst == i)
            s = snap[sel]
            prev = np.concatenate(([self.in_snap.get(i, False)], s[:-1]))
            start[sel] = s & ~prev
            self.in_snap[i] = bool(s[-1])
        # group ends: the next row differs in instrument, time or snapshot state
        last = np.ones(n, bool)
        last[:-1] = (inst[1:] != inst[:-1]) | (ts[1:] != ts[:-1]) | (snap[1:] != snap[:-1])
        n_clear = int(start.sum())
        out = np.zeros(n + n_clear, EVENT_DTYPE)
        pos = np.arange(n) + np.cumsum(start)  # each row shifted by the clears before it
        out["ts_event"][pos] = ts
        out["price"][pos] = ticks
        out["size"][pos] = _decimal.fixed_to_float(am, SCALE)
        out["instrument"][pos] = inst
        out["side"][pos] = side
        out["action"][pos] = ACTION_UPDATE
        out["flags"][pos] = np.where(snap, FLAG_SNAPSHOT, 0) | np.where(last, FLAG_LAST, 0)
        cpos = pos[start] - 1
        out["ts_event"][cpos] = ts[start]
        out["instrument"][cpos] = inst[start]
        out["action"][cpos] = ACTION_CLEAR
        out["flags"][cpos] = FLAG_SNAPSHOT
        self.number(out)
        return out

    def number(self, out: np.ndarray) -> None:
        """Per-instrument contiguous seq over the events, continuing across batches."""
        for i in np.unique(out["instrument"]).tolist():
            sel = np.flatnonzero(out["instrument"] == i)
            s0 = self.seq.get(i, 0)
            out["seq"][sel] = np.arange(s0 + 1, s0 + 1 + len(sel), dtype=np.uint64)
            self.seq[i] = s0 + len(sel)

    # -- book_snapshot_N ------------------------------------------------------------------
    def snapshots(self, cols: list[str]) -> Iterator[np.ndarray]:
        depth = (len(cols) - 4) // 4
        expected = [
            f"{s}[{i}].{f}"
            for i in range(depth)
            for s in ("asks", "bids")
            for f in ("price", "amount")
        ]
        if cols[4:] != expected:
            raise DataError(
                self.path,
                "level columns are not asks[i].price, asks[i].amount, "
                "bids[i].price, bids[i].amount for i = 0..N-1",
                row=1,
            )
        self.state = levels_kernel.new_levels_state(depth)
        self.depth = depth
        schema = dict.fromkeys(cols, pl.Utf8)
        for df, row0 in self.frames(schema):
            yield self.snapshot_frame(df, row0)

    def snapshot_frame(self, df: pl.DataFrame, row0: int) -> np.ndarray:
        n, depth = len(df), self.depth
        ts, bad = self.timestamps(df, row0)
        mats = {}
        for s in ("asks", "bids"):
            for f in ("price", "amount"):
                strs = [
                    x for i in range(depth) for x in df[f"{s}[{i}].{f}"].fill_null("").to_list()
                ]
                v, st, _ = _decimal.parse_fixed(strs, SCALE)
                mats[s, f] = (
                    v.reshape(depth, n).T,
                    st.reshape(depth, n).T,
                    np.array(strs, dtype=object).reshape(depth, n).T,
                )
        for s in ("asks", "bids"):
            pv, pst, ps = mats[s, "price"]
            av, ast, _ = mats[s, "amount"]
            empty = pst == EMPTY
            badp = ((pst != OK) & ~empty) | ((pst == OK) & (pv <= 0))
            bada = ((ast != OK) & ~(empty & (ast == EMPTY))) | (av < 0)
            rows = (badp | bada).any(axis=1) & ~bad
            self.flag_rows(
                rows,
                "bad_price",
                lambda j, ps=ps, s=s: (
                    f"{s} level is not a "
                    f"positive price with an amount >= 0 (prices {list(ps[j][:3])}...)"
                ),
                row0,
            )
            bad |= rows
        keep = np.flatnonzero(~bad)
        if len(keep) == 0:
            return np.zeros(0, EVENT_DTYPE)
        allpx = np.concatenate([mats["asks", "price"][0][keep], mats["bids", "price"][0][keep]], 1)
        inst = self.ids(df[keep], allpx, np.ones(len(keep), bool))
        units = np.array([self.units[i] for i in inst.tolist()], np.int64)[:, None]
        out = {}
        off = np.zeros(len(keep), bool)
        for s in ("asks", "bids"):
            pv, pst, _ = mats[s, "price"]
            pv, pst = pv[keep], pst[keep]
            present = pst == OK
            ticks = np.where(present, pv // units, levels_kernel.MISSING)
            off |= (present & (ticks * units != pv)).any(axis=1)
            out[s] = (ticks, _decimal.fixed_to_float(mats[s, "amount"][0][keep], SCALE))
        full = np.zeros(n, bool)
        full[keep[off]] = True
        self.flag_rows(
            full,
            "off_tick_price",
            lambda j: (
                "a price is off the tick grid of its instrument; set tick_size in the registry"
            ),
            row0,
        )
        ok = ~off
        return levels_kernel.levels_to_events(
            self.state,
            ts[keep][ok],
            inst[ok],
            out["bids"][0][ok],
            out["bids"][1][ok],
            out["asks"][0][ok],
            out["asks"][1][ok],
            np.full(int(ok.sum()), FLAG_LAST, np.uint8),
        )
