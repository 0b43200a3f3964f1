"""Hyperliquid lines of the hftbacktest recorder (``{"channel": "l2Book" | "trades", ...}``).

The recorder writes Hyperliquid and Binance into the same ``<local_ts_ns> <json>`` line format,
so these lines are read by the ``binance`` reader (format name ``binance``), which hands every
object with a ``channel`` to :class:`HyperliquidParser`. Each ``l2Book`` is a full 20-level
book, emitted as a snapshot (CLEAR + levels); trades are deduplicated by ``tid`` (the recorder
repeats some); the instrument is ``hyperliquid:COIN``.
"""

from __future__ import annotations

from collections import deque

from lobstream.kernels.dtypes import SIDE_ASK, SIDE_BID
from lobstream.replay.readers._depth import MAX_PENDING, SNAP, TRADE, Chain, Chunk, DepthReader


class HyperliquidParser:
    """Hyperliquid messages of one file into the chunks of the reader ``rd``."""

    def __init__(self, rd: DepthReader) -> None:
        self.rd = rd
        self.seen_tids: set = set()
        self.tid_order: deque = deque()

    def parse(self, obj: dict, row: int, ck: Chunk) -> None:
        """Add one ``l2Book`` (as a snapshot) or ``trades`` message to ``ck``."""
        channel = obj.get("channel")
        try:
            if channel == "l2Book":
                d = obj["data"]
                key = self.key(d["coin"])
                bids, asks = d["levels"]
                s = len(ck.px)
                ck.add_levels([(lv["px"], lv["sz"]) for lv in bids], SIDE_BID)
                ck.add_levels([(lv["px"], lv["sz"]) for lv in asks], SIDE_ASK)
                ts = int(d["time"]) * 1_000_000
                ck.msgs.append((SNAP, row, key, ts, 0, 0, 0, s, len(ck.px)))
            elif channel == "trades":
                for t in obj["data"]:
                    if t["tid"] in self.seen_tids:
                        continue
                    self.seen_tids.add(t["tid"])
                    self.tid_order.append(t["tid"])
                    if len(self.tid_order) > MAX_PENDING:
                        self.seen_tids.discard(self.tid_order.popleft())
                    side = {"B": SIDE_BID, "A": SIDE_ASK}.get(t["side"])
                    if side is None:
                        self.rd.bad("bad_side", f"trade side {t['side']!r}; expected B or A", row)
                        continue
                    s = len(ck.px)
                    ck.px.append(t["px"])
                    ck.qty.append(t["sz"])
                    ck.side.append(side)
                    ts = int(t["time"]) * 1_000_000
                    ck.msgs.append((TRADE, row, self.key(t["coin"]), ts, 0, 0, 0, s, s + 1))
            else:
                self.rd.stats.ignored += 1
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            self.rd.bad(
                "bad_record",
                f"{channel} message is missing or has a malformed field "
                f"({exc!r}); expected the Hyperliquid websocket layout",
                row,
            )

    def key(self, coin: str) -> str:
        key = f"hyperliquid:{coin}"
        if key not in self.rd.chains:
            self.rd.chains[key] = Chain(futures=True)
        return key
