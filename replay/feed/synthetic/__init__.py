"""A seeded synthetic market: canonical events for tests, benchmarks and demos.

The generator keeps its own L2 book per instrument (a tick ladder, like the kernel's) and emits
level updates that a real feed would send for it:

- activity concentrates near the touch: the depth of an update is geometric (``near_touch``
  is the chance that it hits the touch itself);
- deletes (size 0), including of the touch, which exposes the next deeper level; orders that
  improve the touch inside the spread; trades at the touch followed by the reduced level. The
  mid-price is then a random walk that emerges from these, as in a real book;
- every instrument opens with ``ACTION_CLEAR`` + a snapshot of its levels (``FLAG_SNAPSHOT``,
  LAST on its final event only); every ``snapshot_every`` packets on average an instrument is
  snapshotted again (0 = never after the opening one);
- optional sequence gaps (``gap_prob`` per event: one sequence number skipped), each followed
  by a recovery snapshot of that instrument at its next packet;
- events come in per-instrument packets of geometric length (mean ``packet_mean``), LAST on the
  last event of each; ``last_every_event=True`` sets LAST on every event outside snapshots (as
  LOBSTER data, where every message leaves a consistent book).

``ts_event`` grows by about ``dt_ns`` per event (non-decreasing); ``ts_recv`` is 0 (unknown);
``seq`` counts per instrument from 1. All randomness comes from ``seed``: same arguments, same
array, on every run.

A market with a planted, known predictive structure (and the true probabilities of its
label, the Bayes ceiling of any model) is :mod:`~lobstream.replay.feed.synthetic.planted`.
"""

from __future__ import annotations

import numpy as np

from lobstream.kernels.dtypes import EVENT_DTYPE
from lobstream.replay.feed.synthetic.kernel import GEN_WIDTH, MAX_DEPTH, generate
from lobstream.replay.feed.synthetic.planted import PlantedMarket, planted_events, probs_from_rows

__all__ = ["PlantedMarket", "planted_events", "probs_from_rows", "synthetic_events"]

START_TS = 1_750_000_000_000_000_000  # 2025-06-15, ns since the epoch


def synthetic_events(
    n_events: int,
    n_instruments: int = 16,
    seed: int = 0,
    *,
    levels: int = 20,
    start_price: int = 10_000,
    near_touch: float = 0.4,
    delete_prob: float = 0.3,
    improve_prob: float = 0.15,
    trade_prob: float = 0.05,
    snapshot_every: int = 2_000,
    gap_prob: float = 0.0,
    packet_mean: float = 2.0,
    last_every_event: bool = False,
    dt_ns: int = 1_000,
) -> np.ndarray:
    """Generate ``n_events`` canonical events for ``n_instruments`` instruments.

    Parameters
    ----------
    n_events : int
        Length of the result (the last packet or snapshot may be cut short).
    n_instruments : int
        Instrument ids ``0 .. n_instruments - 1``, picked uniformly per packet.
    seed : int
        Makes the stream reproducible.
    levels : int
        Levels per side in each opening book and snapshot.
    start_price : int
        Mid of instrument 0 in ticks; instrument ``i`` starts near ``start_price * (1 + i % 7)``.
    near_touch, delete_prob, improve_prob, trade_prob : float
        Chance that an update hits the touch, that it deletes an existing level, that it
        improves the touch inside a spread of >= 2 ticks, and that an event is a trade.
    snapshot_every : int
        Mean packets between re-snapshots of an instrument (0 = opening snapshot only).
    gap_prob : float
        Chance per event that one sequence number is skipped (a lost message).
    packet_mean : float
        Mean events per packet (LAST at the end of each).
    last_every_event : bool
        LAST on every event outside snapshots.
    dt_ns : int
        Mean nanoseconds between events.

    Returns
    -------
    ndarray (n_events,) EVENT_DTYPE
    """
    if n_events < 0 or n_instruments < 1:
        raise ValueError(
            f"need n_events >= 0 and n_instruments >= 1, got {n_events}, {n_instruments}"
        )
    for name, p in (
        ("near_touch", near_touch),
        ("delete_prob", delete_prob),
        ("improve_prob", improve_prob),
        ("trade_prob", trade_prob),
        ("gap_prob", gap_prob),
    ):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    if not 1 <= levels <= MAX_DEPTH:
        raise ValueError(f"levels must be in 1..{MAX_DEPTH}, got {levels}")
    if start_price < 4 * GEN_WIDTH:
        raise ValueError(
            f"start_price must be >= {4 * GEN_WIDTH} ticks so prices stay "
            f"positive, got {start_price}"
        )
    if packet_mean < 1.0:
        raise ValueError(f"packet_mean must be >= 1, got {packet_mean}")
    out = np.zeros(int(n_events), EVENT_DTYPE)
    snap_p = 0.0 if snapshot_every <= 0 else 1.0 / snapshot_every
    generate(
        out,
        int(n_instruments),
        int(seed),
        int(levels),
        int(start_price),
        float(near_touch),
        float(delete_prob),
        float(improve_prob),
        float(trade_prob),
        snap_p,
        float(gap_prob),
        1.0 / float(packet_mean),
        bool(last_every_event),
        float(dt_ns),
        START_TS,
    )
    return out
