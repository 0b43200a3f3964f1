"""``lobstream feed VENUE``: live market data from an exchange to ``lobstream serve``."""

from __future__ import annotations

import json
from pathlib import Path

import click
import zmq

from lobstream.cli.options import REGISTRY, json_flag, registry_from


@click.group()
def feed() -> None:
    """Live market data from an exchange, published on md.<symbol> for lobstream serve."""


@feed.command()
@click.option(
    "--market", type=click.Choice(["spot", "usdm", "coinm"]), default="spot", show_default=True,
    help="Spot, USD-M futures or COIN-M futures.",
)  # fmt: skip
@click.option("--symbols", required=True, help="Comma-separated exchange symbols: BTCUSDT,ETHUSDT.")
@click.option(
    "--to", "endpoint", required=True, help="ZeroMQ endpoint, e.g. ipc:///tmp/lobstream-md."
)
@click.option(
    "--bind/--connect", default=True, show_default=True,
    help="Bind the endpoint (the daemon connects, its default) or connect to a binding daemon.",
)  # fmt: skip
@click.option(
    "--record", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Also write what was received to rotating gz files here (the Binance reader's format).",
)  # fmt: skip
@click.option(
    "--rotate-mb", type=click.IntRange(1), default=1024, show_default=True,
    help="Start a new recording file after this many MB (and at each UTC midnight).",
)  # fmt: skip
@REGISTRY
@click.option(
    "--depth-stream", default="depth@100ms", show_default=True,
    help="Depth stream suffix: depth@100ms, depth (1 s), or on futures depth@0ms.",
)  # fmt: skip
@click.option(
    "--trades/--no-trades", default=True, show_default=True, help="Also the trade stream."
)
@click.option(
    "--metrics", "metrics_address", default="127.0.0.1:9109", show_default=True,
    help="host:port of the Prometheus endpoint; empty: none.",
)  # fmt: skip
@click.option(
    "--stall-s", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
    help="Reconnect after this long without a message.",
)  # fmt: skip
@click.option(
    "--snapshot-interval-s", type=click.FloatRange(min=0), default=1.0, show_default=True,
    help="At least this long between REST snapshot requests (Binance's rate limits).",
)  # fmt: skip
@click.option(
    "--snapshot-limit", type=click.IntRange(5, 5000), default=1000, show_default=True,
    help="Levels per side of the REST snapshot (futures take at most 1000).",
)  # fmt: skip
@click.option(
    "--max-chunk", type=click.IntRange(1), default=256, show_default=True,
    help="Messages synced and published together at most, when they queue up.",
)  # fmt: skip
@click.option("--ws-url", default=None, help="Websocket base URL instead of the venue's.")
@click.option("--rest-url", default=None, help="REST base URL instead of the venue's.")
@click.option(
    "--wait", "wait_s", type=click.FloatRange(min=0), default=0.0, show_default=True,
    help="Before connecting, wait up to this long for --subscribers to join.",
)  # fmt: skip
@click.option("--subscribers", type=click.IntRange(min=0), default=0, help="See --wait.")
@click.option("--lossless", is_flag=True, help="Wait for a slow subscriber instead of dropping.")
@click.option(
    "--seconds", "run_s", type=click.FloatRange(min=0), default=0.0, show_default=True,
    help="Stop after this long (0: until Ctrl-C or SIGTERM).",
)  # fmt: skip
@json_flag("Print the final counts as one JSON object.")
def binance(market, symbols, endpoint, bind, record, rotate_mb, registry, depth_stream, trades,
            metrics_address, stall_s, snapshot_interval_s, snapshot_limit, max_chunk, ws_url,
            rest_url, wait_s,
            subscribers, lossless, run_s, as_json) -> None:  # fmt: skip
    """Binance depth diffs + REST snapshot, synced by update id, published as canonical
    events; gaps resync, dropped connections reconnect, counters in the feed.status
    heartbeat and on Prometheus."""
    from lobstream.live.binance import BinanceFeed, FeedConfig, FeedError

    try:
        cfg = FeedConfig(
            market=market, symbols=tuple(s.strip().upper() for s in symbols.split(",") if s.strip()),
            endpoint=endpoint, bind=bind, record=str(record) if record else None,
            rotate_bytes=rotate_mb << 20, ws_url=ws_url, rest_url=rest_url,
            depth_stream=depth_stream, trades=trades, metrics_address=metrics_address,
            stall_s=stall_s, snapshot_interval_s=snapshot_interval_s,
            snapshot_limit=snapshot_limit, max_chunk=max_chunk, wait_s=wait_s,
            subscribers=subscribers, lossless=lossless, run_s=run_s,
        )  # fmt: skip
        final = BinanceFeed(cfg, registry_from(registry)).run(handle_signals=True)
    except (FeedError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except zmq.ZMQError as exc:  # bad endpoint, address in use
        raise click.ClickException(f"cannot open {endpoint}: {exc}") from None
    if as_json:
        click.echo(json.dumps(final))
        return
    c = final["counts"]
    click.echo(
        f"feed {market} -> {final['endpoint']}: {c['messages']:,} messages, {c['events']:,} "
        f"events, {c['gaps']} gaps, {c['resyncs']} resyncs, {c['stale_snapshots']} stale "
        f"snapshots, {sum(c['reconnects'].values())} reconnects, "
        f"{sum(c['malformed'].values())} malformed"
    )
