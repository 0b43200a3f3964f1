"""``lobstream bench``: the latency and throughput benchmarks, the same commands as ``python
-m bench.latency`` and ``python -m bench.throughput``."""

from __future__ import annotations

import click

from lobstream.bench.latency import latency
from lobstream.bench.throughput import throughput


@click.group("bench")
def bench() -> None:
    """Latency (live daemon) and throughput (offline) benchmarks."""


bench.add_command(latency)
bench.add_command(throughput)
