"""``lobstream demo``: the main job on embedded defaults (:func:`lobstream.bench.demo.run_demo`),
shown live on the terminal."""

from __future__ import annotations

import json

import click
import numpy as np

from lobstream.cli.options import BUNDLED_MODEL, device, json_flag


@click.command()
@click.option("--duration", default=90.0, show_default=True, help="Seconds of replay to show.")
@click.option("--speed", default=200.0, show_default=True, help="Replay speed (1 = real time).")
@BUNDLED_MODEL
@device("auto")
@json_flag("Print the summary as one JSON object.")
def demo(duration: float, speed: float, model_path: str | None, device: str, as_json: bool) -> None:
    """Replay the bundled LOBSTER sample through a live daemon and show its signals."""
    from rich.console import Console

    from lobstream.bench.demo import DemoError, run_demo

    console = Console(stderr=as_json)
    screen = _Screen(console, duration, speed)
    try:
        summary = run_demo(
            duration=duration,
            speed=speed,
            model=model_path,
            device=device,
            on_phase=screen.phase,
            on_update=screen.update,
        )
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        screen.close()
    if as_json:
        click.echo(json.dumps(summary))
        return
    from rich.table import Table

    t = Table(title="summary")
    t.add_column("figure")
    t.add_column("value", justify="right")
    for k, v in summary.items():
        t.add_row(k, f"{v:,.3f}" if isinstance(v, float) else f"{v:,}" if v is not None else "-")
    console.print(t)


class _Screen:
    """A spinner with what is being done, then the live table once the replay runs."""

    def __init__(self, console, duration: float, speed: float) -> None:
        self.console = console
        self.duration = duration
        self.speed = speed
        self.status = None
        self.live = None

    def phase(self, text: str) -> None:
        if self.live is not None:  # only Ctrl-C comes after the replay started
            self.console.print(text)
            return
        if self.status is None:
            self.status = self.console.status(text)
            self.status.start()
        else:
            self.status.update(text)

    def update(self, stats, elapsed: float) -> None:
        from rich.live import Live

        if self.live is None:
            self._stop_status()
            self.live = Live(console=self.console, refresh_per_second=4)
            self.live.start()
        self.live.update(_view(stats, elapsed, self.duration, self.speed))

    def close(self) -> None:
        self._stop_status()
        if self.live is not None:
            self.live.stop()

    def _stop_status(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def _view(stats, elapsed: float, duration: float, speed: float):
    from rich.table import Table

    from lobstream.bench.demo import ROLLING

    t = Table(title=f"GOOG 2012-06-21 replay at {speed:g}x", expand=False)
    t.add_column("figure")
    t.add_column("value", justify="right")
    counts = stats.status.get("counts", {})
    acc = np.mean(stats.recent_hits) if stats.recent_hits else float("nan")
    t.add_row("elapsed", f"{elapsed:5.1f} / {duration:.0f} s")
    t.add_row("events in daemon", f"{counts.get('events', 0):,}")
    t.add_row("signals", f"{stats.n:,}")
    t.add_row("signals/s", f"{stats.rate():,.0f}")
    t.add_row("latency p50 / p99", f"{stats.pct(50):,.0f} / {stats.pct(99):,.0f} us")
    t.add_row(f"accuracy (last {ROLLING})", f"{acc:.3f}")
    t.add_row("conflated", f"{counts.get('conflated', 0):,}")
    t.add_row("stale instruments", str(stats.status.get("stale", 0)))
    rejected = sum(v for k, v in counts.items() if k.startswith("rejected."))
    t.add_row("rejected messages", str(rejected))
    return t
