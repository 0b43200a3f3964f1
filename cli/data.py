"""``lobstream replay`` (files -> live ZeroMQ feed) and ``lobstream convert`` (files -> Parquet)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lobstream.cli.options import (
    FORMAT,
    PATHS,
    REGISTRY,
    SKIP_BAD,
    check_ray_address,
    json_flag,
    ray,
    registry_from,
)
from lobstream.replay.errors import DataError, Defects


@click.command()
@PATHS
@click.option("--to", "endpoint", required=True, help="ZeroMQ endpoint, e.g. ipc:///tmp/md.")
@click.option(
    "--speed",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Replay speed: 1 real time, 10 ten times faster, 0 as fast as possible.",
)
@click.option(
    "--bind/--connect", default=True, show_default=True, help="Bind the endpoint or connect."
)
@SKIP_BAD
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Events per message at most (whole LAST groups; a longer group is sent whole).",
)
@click.option(
    "--coalesce-us",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="When paced, one message may span this much wall time (0: same timestamp only).",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds to wait for subscribers to connect before sending (slow joiner).",
)
@click.option(
    "--subscribers",
    type=click.IntRange(min=0),
    default=0,
    help="Start as soon as this many subscribers joined (still at most --wait seconds).",
)
@click.option(
    "--hwm", type=click.IntRange(min=0), default=100_000, show_default=True,
    help="Queue length per subscriber in messages (0: unbounded).",
)  # fmt: skip
@click.option(
    "--lossless", is_flag=True, help="Block instead of dropping when a subscriber falls behind."
)
@click.option(
    "--no-require-snapshot",
    is_flag=True,
    help="Also send events of instruments that have not had a snapshot yet.",
)
@click.option(
    "--merge/--sequential",
    default=False,
    show_default=True,
    help="Interleave the FILES by time (several instruments at once) or play one after another.",
)
@REGISTRY
@FORMAT
@json_flag("Print the end counts as one JSON object.")
def replay(files, endpoint, speed, bind, skip_bad, batch, coalesce_us, wait, subscribers, hwm,
           lossless, no_require_snapshot, merge, registry, fmt, as_json) -> None:  # fmt: skip
    """Publish historical FILES as a live market-data feed (ZeroMQ PUB, md.<symbol> topics)."""
    from lobstream.replay.feed.replayer import Replayer, ReplayStats, merge_by_time
    from lobstream.replay.readers import read_events

    reg = registry_from(registry)
    defects = Defects()
    console = Console(stderr=True)
    stats = ReplayStats()
    interrupted = False
    try:
        rep = Replayer(
            endpoint, bind=bind, speed=speed, batch=batch, coalesce_us=coalesce_us, wait=wait,
            subscribers=subscribers, hwm=hwm, lossless=lossless,
            require_snapshot=not no_require_snapshot,
        )  # fmt: skip
    except Exception as exc:  # zmq errors: bad endpoint, address in use
        raise click.ClickException(f"cannot open {endpoint}: {exc}") from None
    with (
        rep,
        Progress(
            TextColumn("[bold]replay[/] {task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=as_json,
        ) as bar,
    ):
        task = bar.add_task("waiting for subscribers", total=None)

        def show(s: ReplayStats) -> None:
            bar.update(task, description=f"{s.events:,} events, {s.events_per_s:,.0f} ev/s")

        if merge:
            batches = merge_by_time(
                [read_events([f], reg, fmt=fmt, skip_bad=skip_bad, defects=defects) for f in files]
            )
        else:
            batches = read_events(files, reg, fmt=fmt, skip_bad=skip_bad, defects=defects)
        try:
            stats = rep.run(batches, reg, progress=show)
        except (DataError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            interrupted = True
    out = stats.as_dict() | {"defects": dict(defects), "interrupted": interrupted}
    if as_json:
        click.echo(json.dumps(out))
        return
    table = Table(title=f"replay to {rep.endpoint}" + (" (interrupted)" if interrupted else ""))
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [
        ("events", f"{stats.events:,}"),
        ("messages", f"{stats.messages:,}"),
        ("bytes", f"{stats.bytes:,}"),
        ("seconds", f"{stats.seconds:.3f}"),
        ("achieved rate (events/s)", f"{stats.events_per_s:,.0f}"),
        ("pacing error p50 (us)", _maybe(stats.pacing_p50_us)),
        ("pacing error p99 (us)", _maybe(stats.pacing_p99_us)),
        ("not sent: before a snapshot", f"{stats.dropped_before_snapshot:,}"),
    ]
    for sym, n in sorted(stats.per_symbol.items()):
        rows.append((f"events of {sym}", f"{n:,}"))
    for r in rows:
        table.add_row(*r)
    report = Console()
    report.print(table)
    if defects:
        report.print(defects_table(defects))


def _maybe(v: float | None) -> str:
    return "n/a (speed 0)" if v is None else f"{v:,.0f}"


@click.command()
@PATHS
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Dataset root: instrument=SYMBOL/date=YYYY-MM-DD/part-*.parquet below it.",
)
@FORMAT
@SKIP_BAD
@REGISTRY
@click.option(
    "--rows-per-file", type=click.IntRange(min=1), default=1_000_000, show_default=True,
    help="Events per Parquet part file at most.",
)  # fmt: skip
@json_flag("Print the summary as one JSON object.")
@ray
def convert(files, out, fmt, skip_bad, registry, rows_per_file, as_json, ray_address) -> None:
    """Convert FILES of any supported format to canonical Parquet under --out.

    With --ray, one Ray task per unit of files (every file of an instrument in one task, so
    each partition is written by one task: the same part files as in one process)."""
    from lobstream.replay.distributed.convert import convert_here_or_on_ray
    from lobstream.replay.distributed.session import RayUnavailable

    check_ray_address(ray_address)
    reg = registry_from(registry)
    console = Console(stderr=True)
    t0 = time.perf_counter()
    with Progress(
        TextColumn("[bold]convert[/] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} files"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=as_json,
    ) as bar:
        task = bar.add_task("", total=len(files))
        done: list[Path] = []

        def show(path: Path, n: int) -> None:
            if done and done[-1] != path:
                bar.advance(task)
            if not done or done[-1] != path:
                done.append(path)
            bar.update(task, description=f"{path.name}: {n:,} events")

        try:
            summary = convert_here_or_on_ray(
                ray_address, files, out, reg, fmt=fmt, skip_bad=skip_bad,
                rows_per_file=rows_per_file, progress=show,
            )  # fmt: skip
        except RayUnavailable as exc:
            raise click.UsageError(str(exc)) from None
        except (DataError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        bar.update(task, completed=len(files))
    if as_json:
        click.echo(json.dumps(summary.as_dict() | {"seconds": time.perf_counter() - t0}))
        return
    report = Console()
    table = Table(title=f"converted {len(files)} file(s) into {out}")
    for col in ("input", "format", "events"):
        table.add_column(col, justify="right" if col == "events" else "left")
    for p, (f, n) in summary.inputs.items():
        table.add_row(str(p), f, f"{n:,}")
    report.print(table)
    parts: dict[Path, list[int]] = {}
    for p, n in summary.written.items():
        parts.setdefault(p.parent, []).append(n)
    table = Table(title="partitions written")
    for col in ("partition", "files", "events"):
        table.add_column(col, justify="left" if col == "partition" else "right")
    for folder, ns in sorted(parts.items()):
        table.add_row(str(folder.relative_to(out)), str(len(ns)), f"{sum(ns):,}")
    report.print(table)
    report.print(
        f"{summary.events:,} events in {time.perf_counter() - t0:.2f} s; "
        f"{sum(summary.defects.values()):,} bad records skipped"
    )
    if summary.defects:
        report.print(defects_table(summary.defects))


def defects_table(defects: Defects) -> Table:
    """The ``--skip-bad`` report: each defect kind, its count and where it was first seen."""
    table = Table(title="skipped defects")
    for col in ("kind", "count", "first seen"):
        table.add_column(col)
    for kind, n in sorted(defects.items()):
        table.add_row(kind, f"{n:,}", defects.first.get(kind, ""))
    return table
