"""Depth messages to events: the state machine shared by the Binance and Hyperliquid readers.

A venue reader parses its messages into a :class:`Chunk` (price and quantity strings per level,
and one tuple per message) and hands it to :meth:`DepthReader.process`, which converts the
numbers in bulk, applies the update-id rules and builds the events. What is emitted, per
instrument:

- A snapshot becomes ``ACTION_CLEAR`` + one ``ACTION_UPDATE`` per level, all ``FLAG_SNAPSHOT``,
  the last with ``FLAG_LAST``. Each applied diff message becomes one update per level, the last
  with ``FLAG_LAST``. Trades are ``ACTION_TRADE`` with ``seq`` 0 and no flags; their ``side`` is
  the aggressor's (``SIDE_BID`` = buyer-initiated).
- Update-id sync (Binance's rules): spot drops diffs with ``u <= lastUpdateId``, the first kept
  one must have ``U <= lastUpdateId + 1 <= u`` and then ``U == previous u + 1``; futures drop
  ``u < lastUpdateId``, need ``U <= lastUpdateId <= u`` first and then ``pu == previous u``.
  Diffs recorded before the snapshot line are buffered and replayed after it under those rules.
- ``seq`` is a per-instrument counter, contiguous while the id chain holds. A broken chain skips
  one number (a gap), so the book kernel marks the instrument stale until the next snapshot;
  the diffs after the break are still emitted (and counted in the log). A live feed
  (:mod:`lobstream.live`) sets ``Chain.resync``: the diff that breaks the chain is emitted (its
  skipped number marks the book stale) and held, with the ones after it, until the next
  snapshot, after which they are replayed under the rules above, exactly as diffs before a
  first snapshot.
- Diffs for an instrument that has never had a snapshot are not emitted (their count is
  logged). The sync state is kept per registry, so files read one after the other with the
  same registry continue the same book.
- Times are clamped to be non-decreasing per instrument (trades and depth come from separate
  streams); clamps are counted in the log. ``ts_recv`` is 0.
- A registry entry under the instrument key or the plain symbol sets the tick; without one, the
  tick is inferred as the coarsest grid holding every price of the first chunk and logged.
"""

from __future__ import annotations

import logging
import weakref
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lobstream.kernels.dtypes import (
    ACTION_CLEAR,
    ACTION_TRADE,
    ACTION_UPDATE,
    EVENT_DTYPE,
    FLAG_LAST,
    FLAG_SNAPSHOT,
)
from lobstream.kernels.registry import Instrument, Registry
from lobstream.replay.errors import DataError, Defects
from lobstream.replay.readers import _decimal
from lobstream.replay.readers._decimal import OK, STATUS_NAMES

logger = logging.getLogger(__name__)

SCALE = 8  # Binance and Hyperliquid send at most 8 decimals
CHUNK_BYTES = 1 << 20  # compressed bytes per block of recorder lines
MAX_PENDING = 20_000  # pre-snapshot diffs kept for replay after the snapshot (and trade ids)

# message kinds; a message is (kind, row, key, ts_ns, U, u, pu, lv_start, lv_end)
DEPTH, SNAP, TRADE = 0, 1, 2


@dataclass
class Chain:
    """Sync state of one instrument's update-id chain (kept across files of one registry)."""

    futures: bool
    synced: bool = False
    fresh: bool = False  # a snapshot was applied and no diff yet
    last_u: int = 0
    seq: int = 0
    last_ts: int = 0
    pending: deque = field(default_factory=lambda: deque(maxlen=MAX_PENDING))
    # live feeds: after a chain break, hold the diffs in ``pending`` until the next snapshot
    # (a recording goes on emitting them to the stale book instead)
    resync: bool = False
    gaps: int = 0  # chain breaks of this instrument
    stale_snapshots: int = 0  # ... of them at the first diff after a snapshot


@dataclass
class Stats:
    ignored: int = 0
    dropped_old: int = 0
    gaps: int = 0
    clamped: int = 0
    snapshots: int = 0


# Sync state per registry: reading files in order with one registry chains them.
_CHAINS: weakref.WeakKeyDictionary[Registry, dict[str, Chain]] = weakref.WeakKeyDictionary()


def chains(registry: Registry) -> dict[str, Chain]:
    d = _CHAINS.get(registry)
    if d is None:
        d = {}
        _CHAINS[registry] = d
    return d


class Chunk:
    """Messages and their levels, gathered in Python before one bulk numeric conversion."""

    def __init__(self) -> None:
        self.px: list[str] = []
        self.qty: list[str] = []
        self.side: list[int] = []
        self.ticks = self.size = self.sides = np.zeros(0, np.int64)
        # per message: kind, row, key, ts_ns, U, u, pu, lv_start, lv_end
        self.msgs: list[tuple] = []
        # row -> local receipt time (ns) of the snapshot lines: a spot REST snapshot carries no
        # time of its own, and before any stamped message its chain has none to lend it
        self.local_ns: dict[int, int] = {}

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


class DepthReader:
    """Numbers, update-id sync and events of one file; venue readers add the parsing."""

    def __init__(self, path: Path, registry: Registry, skip_bad: bool, defects: Defects):
        self.path = path
        self.registry = registry
        self.skip_bad = skip_bad
        self.defects = defects
        self.chains = chains(registry)
        self.stats = Stats()
        self.units: dict[str, int] = {}
        self.inst: dict[str, Instrument] = {}

    # -- errors ---------------------------------------------------------------------------
    def bad(self, kind: str, problem: str, row: int) -> None:
        """Raise, or count the defect when skipping."""
        if not self.skip_bad:
            raise DataError(self.path, problem, row=row)
        self.defects.add(kind, f"{self.path} row {row}")

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

    # -- numbers, sync and events ---------------------------------------------------------
    def process(self, ck: Chunk) -> np.ndarray:
        if not ck.msgs:
            return np.zeros(0, EVENT_DTYPE)
        pxv, pst = _fixed(ck.px)
        qv, qst = _fixed(ck.qty)
        lv_bad = (pst != OK) | (qst != OK) | (pxv <= 0) | (qv < 0)
        side = np.asarray(ck.side, np.int64)
        lv_bad |= side > 1
        # per-level message index, to find bad messages and group tick inference
        bad_msgs = set()
        if lv_bad.any():
            for j, mi in _newly_bad(ck, lv_bad, bad_msgs):
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
            for j, mi in _newly_bad(ck, off_grid, bad_msgs):
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
        if pst != OK:
            return "bad_price", (
                f"price {ck.px[j]!r} is {STATUS_NAMES[pst]}; expected "
                f"a decimal string with at most {SCALE} decimals"
            )
        if qst != OK:
            return "bad_quantity", (
                f"quantity {ck.qty[j]!r} is {STATUS_NAMES[qst]}; "
                f"expected a decimal string with at most {SCALE} decimals"
            )
        if px <= 0:
            return "non_positive_price", f"price {ck.px[j]} is not positive"
        return "negative_quantity", f"quantity {ck.qty[j]} is negative; expected >= 0"

    def sync(self, ck: Chunk, bad_msgs: set) -> list[tuple]:
        """Apply the update-id rules; returns pieces (action, msg, seq0, ts, flags, key, chunk)."""
        plan: list[tuple] = []
        for mi, m in enumerate(ck.msgs):
            if mi in bad_msgs:
                continue
            kind, key = m[0], m[2]
            ch = self.chains[key]
            if kind == TRADE:
                plan.append((ACTION_TRADE, mi, 0, self.stamp(ch, m[3]), 0, key, ck))
            elif kind == SNAP:
                self.snapshot(ch, ck, mi, m, plan)
            elif not ch.synced:
                ch.pending.append((ck, mi))
            else:
                self.diff(ch, ck, mi, m, plan)
        return plan

    def stamp(self, ch: Chain, ts: int) -> int:
        if ts < ch.last_ts:
            self.stats.clamped += 1
            return ch.last_ts
        ch.last_ts = ts
        return ts

    def snapshot(self, ch: Chain, ck: Chunk, mi: int, m: tuple, plan: list) -> None:
        ts = self.stamp(ch, m[3] or ch.last_ts or ck.local_ns.get(m[1], 0))
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
        pending, ch.pending = list(ch.pending), deque(maxlen=MAX_PENDING)
        for pck, pmi in pending:
            if ch.synced:
                self.diff(ch, pck, pmi, pck.msgs[pmi], plan)
            else:  # a resyncing chain broke again: this snapshot is older than its diffs
                ch.pending.append((pck, pmi))

    def diff(self, ch: Chain, ck: Chunk, mi: int, m: tuple, plan: list) -> None:
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
            ch.gaps += 1
            ch.stale_snapshots += ch.fresh  # the first diff after a snapshot: it is too old
            ch.seq += 1  # skip one number: the book kernel sees the gap and marks it stale
            if ch.resync:
                # this diff and the ones after it wait for a fresh snapshot (on futures the
                # first diff to apply after one may be this very diff)
                ch.synced = False
                ch.pending.append((ck, mi))
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


def _fixed(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point values and statuses of decimal strings (``parse_fixed`` wants one)."""
    if not strings:
        return np.zeros(0, np.int64), np.zeros(0, np.uint8)
    values, status, _ = _decimal.parse_fixed(strings, SCALE)
    return values, status


def _newly_bad(ck: Chunk, bad_levels: np.ndarray, bad_msgs: set) -> Iterator[tuple[int, int]]:
    """(level, message) for the first bad level of each message not yet in ``bad_msgs``, which
    it joins: one error per message."""
    # message index of every level (levels are not in message order: the bulk depth path adds
    # its block first)
    owner = np.full(len(ck.px), -1, np.int64)
    for mi, m in enumerate(ck.msgs):
        owner[m[7] : m[8]] = mi
    for j in np.flatnonzero(bad_levels):
        mi = int(owner[j])
        if mi not in bad_msgs:
            bad_msgs.add(mi)
            yield int(j), mi


def line_blocks(path: Path) -> Iterator[tuple[list[bytes], str]]:
    """Whole lines in blocks of about ``CHUNK_BYTES`` compressed bytes, and a problem text
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
            block = fh.read(CHUNK_BYTES)
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
