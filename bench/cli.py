"""``lobstream bench``: the latency and throughput benchmarks (also ``python -m bench.NAME``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

logger = logging.getLogger(__name__)


def _rates(value: str) -> tuple[float, ...]:
    try:
        out = tuple(float(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: expected comma-separated events/s (0 = max)"
        ) from None
    if not out or any(r < 0 for r in out):
        raise click.BadParameter(f"{value!r}: expected rates >= 0 (0 = as fast as possible)")
    return out


def _console():
    from rich.console import Console

    # wide tables stay readable when piped to a file (rich assumes 80 columns there)
    c = Console()
    return c if c.is_terminal else Console(width=160)


@click.group("bench")
def bench() -> None:
    """Latency (live daemon) and throughput (offline) benchmarks."""


@bench.command("latency")
@click.option(
    "--rates",
    default="1000,10000,100000,0",
    show_default=True,
    help="Target events/s per run, comma-separated; 0 = as fast as possible.",
)
@click.option(
    "--seconds",
    default=3.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Replay duration per rate (the max-rate run sends seconds x 100k events).",
)
@click.option(
    "--instruments",
    default=10,
    show_default=True,
    type=click.IntRange(1),
    help="Synthetic instruments in the replayed stream.",
)
@click.option(
    "--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda", "auto"])
)
@click.option(
    "--threads",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Torch threads of the daemon.",
)
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Model artifact (default: the bundled one).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Write latency.json and latency.png here.",
)
def latency(rates, seconds, instruments, device, threads, model_path, as_json, out_dir) -> None:
    """End-to-end signal latency of a live daemon at fixed replay rates."""
    from lobstream.engine.latency_bench import run_latency

    result = run_latency(
        model_path,
        rates=_rates(rates),
        seconds=seconds,
        n_instruments=instruments,
        device=device,
        threads=threads,
        progress=None if as_json else click.echo,
    )
    if out_dir:
        from lobstream.replay.backtest.plots import plot_latency

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "latency.json").write_text(json.dumps(result, indent=2))
        result["plot"] = str(
            plot_latency(out / "latency.png", result["rates"], result["model_b1_p50_us"])
        )
    if as_json:
        click.echo(json.dumps(result))
        return
    _latency_table(result)


def _latency_table(result: dict) -> None:
    from rich.table import Table

    t = Table(
        title=(
            f"end-to-end latency (us), {result['n_instruments']} instruments, model "
            f"{result['arch']} on {result['device']}; model alone B=1 p50 "
            f"{result['model_b1_p50_us']:.0f} us"
        )
    )
    cols = (
        "target",
        "sent/s",
        "signals/s",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "conflated",
        "dropped",
        "daemon cpu",
    )
    for c in cols:
        t.add_column(c, justify="right")
    for r in result["rates"]:
        t.add_row(
            f"{r['target_events_per_s']:,.0f}" if r["target_events_per_s"] else "max",
            f"{r['events_per_s']:,.0f}",
            f"{r['signals_per_s']:,.0f}",
            *(f"{r[k]:,.0f}" for k in ("p50_us", "p90_us", "p99_us", "p999_us", "max_us")),
            f"{r['conflated']:,}",
            f"{r['dropped']:,}",
            f"{r['daemon_cpu']:.0%}",
        )
    _console().print(t)
    s = Table(title="daemon stages, mean / p99 (us, from its Prometheus histograms)")
    s.add_column("target", justify="right")
    stages = list(result["rates"][0]["stages"]) if result["rates"] else []
    for st in stages:
        s.add_column(st, justify="right")
    for r in result["rates"]:
        s.add_row(
            f"{r['target_events_per_s']:,.0f}" if r["target_events_per_s"] else "max",
            *(
                f"{r['stages'][st]['mean_us']:,.0f} / {r['stages'][st]['p99_us']:,.0f}"
                for st in stages
            ),
        )
    _console().print(s)


@bench.command("throughput")
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Model artifact (default: the bundled one).",
)
@click.option(
    "--files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="LOB files to score (default: the bundled LOBSTER GOOG sample).",
)
@click.option(
    "--windows",
    default=4096,
    show_default=True,
    type=click.IntRange(1),
    help="Windows scored by the backtest path and by the model alone.",
)
@click.option(
    "--notebook-windows",
    default=1024,
    show_default=True,
    type=click.IntRange(1),
    help="Windows scored the notebook way (it is slow).",
)
@click.option(
    "--batches",
    default="16,32,64,128,256,512",
    show_default=True,
    help="Batch sizes tried for the model alone.",
)
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1))
@click.option(
    "--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda", "auto"])
)
@click.option(
    "--repeat",
    default=3,
    show_default=True,
    type=click.IntRange(1),
    help="Timed turns of every path (medians reported).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def throughput(
    model_path, files, windows, notebook_windows, batches, threads, device, repeat, as_json
) -> None:
    """Offline windows/s: backtest path vs model alone vs the notebook way, one run."""
    from lobstream.engine.throughput_bench import run_throughput

    try:
        bs = tuple(int(b) for b in batches.split(",") if b.strip())
    except ValueError:
        raise click.BadParameter(f"{batches!r}: expected comma-separated integers") from None
    result = run_throughput(
        model_path,
        files or None,
        n_windows=windows,
        notebook_windows=notebook_windows,
        batches=bs,
        threads=threads,
        device=device,
        repeat=repeat,
    )
    if as_json:
        click.echo(json.dumps(result))
        return
    from rich.table import Table

    t = Table(
        title=(
            f"offline windows/s, {result['arch']} on {result['device']}, "
            f"{result['threads']} thread(s)"
        )
    )
    t.add_column("path")
    t.add_column("windows/s", justify="right")
    t.add_column("vs model alone", justify="right")
    m = result["model_only_windows_per_s"]
    for name, key in (
        (f"model alone (B={result['best_batch']})", "model_only_windows_per_s"),
        ("backtest (events in memory)", "backtest_windows_per_s"),
        ("backtest (from file open)", "backtest_with_read_windows_per_s"),
        ("notebook way", "notebook_windows_per_s"),
        ("backtest data path alone", "backtest_data_path_windows_per_s"),
        ("notebook data path alone", "notebook_data_path_windows_per_s"),
    ):
        t.add_row(name, f"{result[key]:,.0f}", f"{result[key] / m:.0%}")
    _console().print(t)
    click.echo(
        f"backtest / notebook: {result['backtest_vs_notebook']:.1f}x end to end, "
        f"{result['data_path_vs_notebook']:.1f}x for the data path alone "
        f"(medians of {result['repeat']} turns)"
    )
