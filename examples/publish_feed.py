"""Feed ``lobstream serve`` from your own venue with :class:`lobstream.live.Publisher`.

    lobstream serve --config examples/serve.toml      # its ingest connects to ipc:///tmp/lobstream-md
    python examples/publish_feed.py --to ipc:///tmp/lobstream-md --symbol GOOG --tick 0.01

A made-up venue stands in for yours: a seeded random walk of a 10-level book around --price,
sent as one update per "exchange packet", a trade now and then, and every --gap-every packets
a lost packet. Each step is what a real feed handler does:

1. register the instrument (symbol and tick size; the daemon's registry must list the same);
2. wait for the daemon's subscription (ZeroMQ drops what is sent before it arrives);
3. send a snapshot of the whole book, then each packet's level changes (the new absolute size
   at a price, 0 removes the level) with the venue's timestamp;
4. when your venue's own sequence breaks, call ``gap()``: the next update tells the daemon
   its book is stale (it ignores updates until a snapshot); then send a fresh snapshot (it
   heals the book).

Run ``python examples/subscribe.py ipc:///tmp/lobstream-sig`` beside it to see the signals.
"""

from __future__ import annotations

import argparse
import random
import time
from decimal import Decimal

from lobstream.kernels.dtypes import SIDE_ASK, SIDE_BID
from lobstream.live import Publisher

LEVELS = 10


class ToyVenue:
    """A seeded random book: ``levels`` bids and asks one tick apart around a wandering mid."""

    def __init__(self, price: Decimal, tick: Decimal, seed: int) -> None:
        self.rng = random.Random(seed)
        self.tick = tick
        self.mid = int(price / tick)  # in ticks
        self.bids = {self.mid - 1 - k: self.size() for k in range(LEVELS)}
        self.asks = {self.mid + 1 + k: self.size() for k in range(LEVELS)}

    def size(self) -> float:
        return float(self.rng.randint(1, 20) * 100)

    def px(self, ticks: int) -> Decimal:
        return ticks * self.tick

    def book(self) -> tuple[list, list]:
        bids = [(self.px(p), s) for p, s in sorted(self.bids.items(), reverse=True)]
        asks = [(self.px(p), s) for p, s in sorted(self.asks.items())]
        return bids, asks

    def packet(self) -> tuple[list, list, tuple | None]:
        """One packet: the changed (price, size) levels per side (size 0: removed) and maybe a
        trade (price, size, aggressor)."""
        if self.rng.random() < 0.1:  # the mid moves one tick: a trade takes the touch
            step = self.rng.choice((-1, 1))
            if step > 0:
                best = min(self.asks)
                trade = (self.px(best), self.asks[best], SIDE_BID)
            else:
                best = max(self.bids)
                trade = (self.px(best), self.bids[best], SIDE_ASK)
            old_b, old_a = self.bids, self.asks
            self.mid += step
            self.bids = {p: old_b.get(p) or self.size() for p in range(self.mid - LEVELS, self.mid)}
            self.asks = {
                p: old_a.get(p) or self.size() for p in range(self.mid + 1, self.mid + 1 + LEVELS)
            }
            if step > 0:
                self.asks[self.mid + 1] = self.size()  # the old best ask was taken
            else:
                self.bids[self.mid - 1] = self.size()
            return self._changes(old_b, self.bids), self._changes(old_a, self.asks), trade
        bids, asks = [], []
        for _ in range(self.rng.randint(1, 3)):
            side, out = (self.bids, bids) if self.rng.random() < 0.5 else (self.asks, asks)
            p = self.rng.choice(list(side))
            side[p] = self.size()
            out.append((self.px(p), side[p]))
        return bids, asks, None

    def _changes(self, old: dict, new: dict) -> list:
        gone = [(self.px(p), 0.0) for p in old if p not in new]
        return gone + [(self.px(p), s) for p, s in new.items() if old.get(p) != s]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--to", default="ipc:///tmp/lobstream-md", help="endpoint to bind")
    ap.add_argument("--symbol", default="GOOG")
    ap.add_argument("--tick", default="0.01", help="tick size (as in the daemon's registry)")
    ap.add_argument("--price", default="580.00", help="where the book starts")
    ap.add_argument("--packets", type=int, default=10_000, help="packets to send, then stop")
    ap.add_argument("--rate", type=float, default=100.0, help="packets per second (0: flat out)")
    ap.add_argument("--gap-every", type=int, default=0, help="lose a packet every N (0: never)")
    ap.add_argument("--subscribers", type=int, default=1, help="wait for this many to join")
    ap.add_argument("--wait", type=float, default=10.0, help="...for at most this many seconds")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    venue = ToyVenue(Decimal(args.price), Decimal(args.tick), args.seed)
    with Publisher(args.to, lossless=True) as pub:
        pub.instrument(args.symbol, args.tick)
        if not pub.wait_for_subscribers(args.subscribers, args.wait):
            print(f"no subscriber after {args.wait} s; sending anyway")
        now = time.time_ns
        bids, asks = venue.book()
        pub.snapshot(args.symbol, bids, asks, ts_event=now())
        period = 1.0 / args.rate if args.rate > 0 else 0.0
        resync = False
        for k in range(1, args.packets + 1):
            bids, asks, trade = venue.packet()
            if args.gap_every and k % args.gap_every == 0:
                pub.gap(args.symbol)  # this packet was lost: the daemon's book goes stale
                resync = True
                continue
            pub.update(args.symbol, bids, asks, ts_event=now())
            if resync:  # the venue's snapshot, fetched meanwhile, heals it
                bids, asks = venue.book()
                pub.snapshot(args.symbol, bids, asks, ts_event=now())
                resync = False
            if trade is not None:
                pub.trade(args.symbol, trade[0], trade[1], trade[2], ts_event=now())
            if period:
                time.sleep(period)
        print(f"sent {pub.messages:,} messages, {pub.events:,} events to {pub.endpoint}")


if __name__ == "__main__":
    main()
