"""``lobstream bench latency|throughput``: the benchmarks ``python -m bench.latency`` and
``python -m bench.throughput``, their arguments passed through (the options are the bench
modules' own, defined there once)."""

from __future__ import annotations

import click

# the bench module parses every argument, --help included
_PASS_THROUGH = {
    "context_settings": {"ignore_unknown_options": True, "help_option_names": []},
    "add_help_option": False,
}


@click.group("bench")
def bench() -> None:
    """Latency (live daemon) and throughput (offline) benchmarks."""


@bench.command("latency", **_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def latency(args: tuple[str, ...]) -> None:
    """End-to-end signal latency of a live daemon at fixed replay rates (--help: options)."""
    from lobstream.bench import latency as bench_latency

    bench_latency.main(list(args), prog="lobstream bench latency")


@bench.command("throughput", **_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def throughput(args: tuple[str, ...]) -> None:
    """Offline windows/s: backtest path vs model alone vs the notebook way (--help: options)."""
    from lobstream.bench import throughput as bench_throughput

    # three timed turns by default here, five under python -m bench.throughput
    bench_throughput.main(list(args), prog="lobstream bench throughput", repeat=3)
