"""The 30-minute soak of the daemon (``-m soak``): 200 k events/s over 100 instruments.

``LOBSTREAM_SOAK_MINUTES`` shortens it and ``LOBSTREAM_SOAK_PERIOD_S`` the reported period
(e.g. 1 and 10 for a look); figures per minute come from
``python -m bench.soak``, which this runs. Judged on counts and memory only, never on time.
"""

from __future__ import annotations

import argparse
import os

import pytest

MINUTES = float(os.environ.get("LOBSTREAM_SOAK_MINUTES", "30"))
PERIOD_S = float(os.environ.get("LOBSTREAM_SOAK_PERIOD_S", "60"))  # one reported "minute"


@pytest.mark.soak
@pytest.mark.timeout(int(MINUTES * 60) + 600)
def test_soak_memory_flat_every_event_taken_no_queue_growth():
    from lobstream.bench import soak

    args = argparse.Namespace(
        model=None,
        minutes=MINUTES,
        minute_s=PERIOD_S,
        warmup_min=2,
        rate=200_000.0,
        instruments=100,
        slice_ms=5.0,
        pool_s=10.0,
    )
    result = soak.run(args)
    rows = result["per_minute"]
    assert len(rows) >= max(1, int(MINUTES * 60 / PERIOD_S) - 1)
    bars = result["bars"]
    assert bars["every_event_taken"], (result["events_taken"], result["events_sent"])
    assert bars["no_queue_growth"], [r["backlog_events"] for r in rows]
    assert bars["rss_flat"], [round(r["rss_mb"], 1) for r in rows]
