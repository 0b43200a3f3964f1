"""``python -m bench.feed`` with tiny settings: it runs to the end by itself, every event the
connector published arrives, and the JSON object holds the figures the README quotes. Slow:
it starts two loopback exchanges and four subscriber processes."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("websockets")
pytest.importorskip("aiohttp")

from lobstream.bench import feed as bench_feed  # noqa: E402
from tests.test_live_sync import recording  # noqa: E402


@pytest.mark.slow
def test_bench_feed_smoke(data_dir, capsys):
    path = recording(data_dir, "usdm")
    bench_feed.main(
        ["--json", "--file", str(path), "--repeat", "1", "--messages", "600",
         "--latency-messages", "40", "--latency-speed", "50"]
    )  # fmt: skip
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["peak_msgs_per_s"] == 1669  # the recording's busiest second: depth + trades
    assert out["goal_msgs_per_s"] == 20 * 1669
    for key in ("sync_msgs_per_s", "sync_publish_msgs_per_s", "sync_publish_chunk1_msgs_per_s",
                "websocket_msgs_per_s"):  # fmt: skip
        assert out[key] > 0, key
    for run in (out["websocket_run"], out["latency_run"]):
        assert run["messages"] == run["expected_messages"]
        assert run["events_received"] == run["events_published"] > 0
        assert run["gaps"] == run["reconnects"] == 0
    assert out["websocket_run"]["expected_messages"] == 600
    assert out["latency_run"]["latency_samples"] > 0
    assert 0 < out["latency_p50_us"] <= out["latency_p99_us"]
    assert isinstance(out["goal_met"], bool)
