"""Live market data into ``lobstream serve``.

- :class:`~lobstream.live.publisher.Publisher`: the public API for any venue: canonical events
  (snapshots, level updates, trades, gaps) on ``md.<symbol>`` topics, sequence numbers kept
  (``examples/publish_feed.py``). Needs only the core dependencies.
- :mod:`lobstream.live.binance`: the Binance connector behind ``lobstream feed binance``
  (websocket diffs + REST snapshot, synced by the Binance reader's update-id state machine in
  :mod:`lobstream.live.sync`, resync, reconnect, counters in :mod:`lobstream.live.metrics`,
  recording in :mod:`lobstream.live.record`); :mod:`lobstream.live.loopback`, a Binance-like
  exchange on loopback replaying a recording with faults (tests, ``bench.feed``). Both need the
  ``live`` extra (``pip install 'lobstream[live]'``: websockets, aiohttp), imported only when a
  feed or a loopback exchange runs.
"""

from lobstream.live.publisher import Publisher, encode_levels

__all__ = ["Publisher", "encode_levels"]
