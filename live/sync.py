"""Binance messages to canonical events, live: the Binance reader's parser and its update-id
state machine (:mod:`lobstream.replay.readers._depth`), fed a chunk of messages at a time.

This module does no I/O. The connector (:mod:`lobstream.live.binance`) hands it what the
websocket delivered (``feed``) and the REST snapshots it fetched (``snapshot``), in the order
they arrived; each call returns the events to publish, the lines to record and the symbols that
need a (fresh) snapshot.

Resync: every instrument's chain is a live one (``Chain.resync``): a break in the update ids
emits the diff that broke it (its skipped sequence number marks the daemon's book stale) and
holds it and every later diff until a fresh snapshot, after which they are replayed under the
sync rules, as before a first snapshot. A snapshot older than the first held diff breaks the chain
again and is counted as stale; another is fetched.

Recording order: the lines are recorded in the order the state machine consumed them, so the
Binance reader, which never resyncs, reads back exactly the events that were published. A diff
held for a snapshot is recorded after that snapshot's line (with its own receipt time); the
diff that broke the chain is recorded twice, when it broke it and after the snapshot that
replays it; every other message is recorded when it arrives. Messages the parser rejects (malformed, counted by
reason) and messages of streams not subscribed are not recorded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import numpy as np

from lobstream.kernels.dtypes import EVENT_DTYPE
from lobstream.kernels.registry import Registry
from lobstream.replay.errors import Defects
from lobstream.replay.readers import binance as binance_reader
from lobstream.replay.readers._depth import Chunk

MARKETS = ("spot", "usdm", "coinm")
UNKNOWN_STREAM = "unknown_stream"  # a malformed-message reason of our own


def instrument_key(market: str, symbol: str) -> str:
    """The reader's instrument key of ``symbol`` on ``market`` (``binance:BTCUSDT``,
    ``binance-futures:BTCUSDT``, ``binance-delivery:BTCUSD_PERP``)."""
    if market not in MARKETS:
        raise ValueError(f"market must be one of {', '.join(MARKETS)}, got {market!r}")
    if market == "spot":
        return f"binance:{symbol}"
    return f"binance-delivery:{symbol}" if "_" in symbol else f"binance-futures:{symbol}"


@dataclass
class Output:
    """What one call produced.

    ``events`` (n,) EVENT_DTYPE (``ts_recv`` 0: the caller stamps it); ``lines``: (symbol,
    recorder line without its newline) in recording order; ``want_snapshot``: symbols whose
    chain waits for a snapshot (and holds a diff, or broke in this call); ``gaps``: symbols whose chain
    broke in this call (a diff was lost); ``stale``: symbols whose snapshot was older than the
    first diff after it (it broke the chain at once).
    """

    events: np.ndarray
    lines: list[tuple[str, bytes]] = field(default_factory=list)
    want_snapshot: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)


class _LiveReader(binance_reader._Reader):
    """The Binance reader's parser, noting which rows it rejects (their lines are not
    recorded: a recording must read back without ``--skip-bad``)."""

    def __init__(self, source: str, registry: Registry, defects: Defects) -> None:
        super().__init__(Path(source), registry, True, defects)
        self.bad_rows: set[int] = set()

    def bad(self, kind: str, problem: str, row: int) -> None:
        self.bad_rows.add(row)
        super().bad(kind, problem, row)


class BinanceSync:
    """Update-id sync of the ``symbols`` of one Binance market.

    Parameters
    ----------
    market : str
        ``spot``, ``usdm`` or ``coinm``.
    symbols : sequence of str
        Exchange symbols (``BTCUSDT``); stream names are their lower case.
    registry : Registry
        Instruments; a symbol is looked up under its instrument key, then its plain name (as
        the reader does); ``ticks`` registers the missing ones under the key.
    ticks : mapping symbol -> tick size, optional
        The exchange's tick sizes (from exchangeInfo). Without a registry entry or a tick,
        the reader infers the tick from the first prices it sees, which live is unsafe: the
        connector always passes them.
    """

    def __init__(
        self,
        market: str,
        symbols: Sequence[str],
        registry: Registry,
        ticks: dict[str, Decimal | str] | None = None,
    ) -> None:
        self.market = market
        self.registry = registry
        self.defects = Defects()
        self.reader = _LiveReader(f"binance-{market}-live", registry, self.defects)
        self.symbols = [s.upper() for s in symbols]
        self.keys = {s: instrument_key(market, s) for s in self.symbols}
        self.streams = {s.lower(): s for s in self.symbols}
        self.row = 0
        futures = market != "spot"
        self.chains = {}
        for s, key in self.keys.items():
            if key not in registry and s not in registry and ticks and s in ticks:
                registry.add(key, ticks[s])
            self.reader.key_for(s, futures)
            ch = self.reader.chains[key]
            ch.resync = True
            self.chains[s] = ch
        # lines of held diffs, by row: recorded after the snapshot that releases them
        self._held: dict[int, tuple[str, bytes]] = {}
        self.clock_offset_ns: dict[str, int] = {}  # receipt wall time - exchange time, last
        self.messages = {s: 0 for s in self.symbols}  # websocket messages taken, by symbol

    # -- what the state machine knows ----------------------------------------------------
    def symbol_of(self, instrument_id: int) -> str:
        return self.registry.by_id(instrument_id).symbol

    def topic_symbol(self, symbol: str) -> str:
        """The registry symbol ``symbol`` is published under (``md.<that>``)."""
        key = self.keys[symbol]
        return symbol if key not in self.registry and symbol in self.registry else key

    def state(self, symbol: str) -> str:
        """``syncing`` (never had a snapshot), ``stale`` (chain broke: resyncing) or ``live``."""
        ch = self.chains[symbol]
        if ch.synced:
            return "live"
        return "stale" if ch.gaps else "syncing"

    def force_resync(self, symbol: str) -> bool:
        """Hold ``symbol``'s diffs until a fresh snapshot (a subscriber joined late and has
        no book); False if it is not synced now (a snapshot is coming anyway)."""
        ch = self.chains[symbol]
        if not ch.synced:
            return False
        ch.synced = False
        return True

    def held(self, symbol: str) -> int:
        """Diffs of ``symbol`` waiting for a snapshot."""
        return len(self.chains[symbol].pending)

    # -- input -----------------------------------------------------------------------------
    def feed(self, messages: Iterable[tuple[int, bytes]]) -> Output:
        """Websocket messages ``(receipt wall time ns, raw JSON bytes)``, in arrival order."""
        ck = Chunk()
        lines: list[tuple[int, str, bytes]] = []
        rd = self.reader
        for wall_ns, raw in messages:
            self.row += 1
            row = self.row
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                rd.bad("bad_json", f"not valid JSON ({exc})", row)
                continue
            sym = self._symbol(obj)
            if sym is None:
                self.defects.add(UNKNOWN_STREAM, f"message {row}")
                continue
            self.messages[sym] += 1
            data = obj.get("data")
            if isinstance(data, dict):
                e_ms = data.get("E")
                if isinstance(e_ms, int):
                    self.clock_offset_ns[sym] = wall_ns - e_ms * 1_000_000
            rd.parse_obj(obj, row, ck)
            lines.append((row, sym, b"%d %s" % (wall_ns, raw)))
        return self._run(ck, lines)

    def snapshot(self, symbol: str, wall_ns: int, body: bytes) -> Output:
        """A REST depth snapshot of ``symbol`` (the response body), received at ``wall_ns``."""
        ck = Chunk()
        self.row += 1
        row = self.row
        rd = self.reader
        lines: list[tuple[int, str, bytes]] = []
        try:
            obj = json.loads(body)
        except ValueError as exc:
            rd.bad("bad_json", f"snapshot of {symbol} is not valid JSON ({exc})", row)
            obj = None
        if isinstance(obj, dict) and "lastUpdateId" in obj:
            # which instrument: spot and USD-M bodies do not say (a recording's file name
            # does); the body is recorded as it came
            rd.parse_obj({**obj, "symbol": symbol}, row, ck)
            ck.local_ns[row] = wall_ns  # what the recording's line will say
            body = body.replace(b"\n", b"") if b"\n" in body else body
            lines.append((row, symbol, b"%d %s" % (wall_ns, body)))
        elif obj is not None:
            rd.bad("bad_record", f"snapshot of {symbol} has no lastUpdateId", row)
        return self._run(ck, lines)

    # -- internals -------------------------------------------------------------------------
    def _symbol(self, obj) -> str | None:
        if not isinstance(obj, dict):
            return None
        stream = obj.get("stream")
        if isinstance(stream, str):
            return self.streams.get(stream.split("@", 1)[0])
        return None

    def _run(self, ck: Chunk, lines: list) -> Output:
        rd = self.reader
        before = {s: (ch.gaps, ch.stale_snapshots) for s, ch in self.chains.items()}
        events = rd.process(ck) if ck.msgs else np.zeros(0, EVENT_DTYPE)
        out = Output(events)
        bad, rd.bad_rows = rd.bad_rows, set()
        pending_rows = {pck.msgs[pmi][1] for ch in self.chains.values() for pck, pmi in ch.pending}
        # the diff that broke a chain in this call was applied (its line is recorded now) and
        # is held too (recorded again after the snapshot that replays it)
        broke = {
            ch.pending[0][0].msgs[ch.pending[0][1]][1]
            for s, ch in self.chains.items()
            if ch.gaps != before[s][0] and ch.pending
        }
        for row, sym, line in lines:
            if row in bad:
                continue
            if row in pending_rows:
                self._held[row] = (sym, line)
            if row not in pending_rows or row in broke:
                out.lines.append((sym, line))
        for row in sorted(broke - {r for r, _, _ in lines}):
            out.lines.append(self._held[row])  # held before, applied (and held) again now
        if len(self._held) > len(pending_rows):
            # a snapshot released (replayed) what it held: recorded after the snapshot line
            for row in sorted(r for r in self._held if r not in pending_rows):
                out.lines.append(self._held.pop(row))
        for s, ch in self.chains.items():
            gaps, stale = ch.gaps - before[s][0], ch.stale_snapshots - before[s][1]
            if gaps > stale:
                out.gaps.append(s)
            if stale:
                out.stale.append(s)
            # at the start once a diff is held (the stream is up), after a break at once
            if not ch.synced and (ch.pending or gaps):
                out.want_snapshot.append(s)
        return out
