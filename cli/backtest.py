"""``lobstream backtest``: classification report and trading P&L of a model over LOB files."""

from __future__ import annotations

import json

import click

from lobstream.cli.options import (
    FILES,
    FORMAT,
    MODEL,
    REGISTRY,
    SKIP_BAD,
    check_ray_address,
    device,
    json_flag,
    ray,
    registry_from,
    threads,
)
from lobstream.replay.backtest.trading import DEFAULT_SWEEP


def _thresholds(value: str) -> tuple[float, ...]:
    try:
        out = tuple(float(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated probabilities") from None
    if not out or not all(0 <= t <= 1 for t in out):
        raise click.BadParameter(f"{value!r}: expected probabilities in [0, 1]")
    return out


@click.command("backtest")
@FILES
@MODEL
@json_flag()
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False),
    help="Write PNG figures (equity, confusion, calibration, signals) to this folder.",
)
@click.option(
    "--threshold",
    default=0.6,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Class probability that triggers a long (up) or short (down) entry.",
)
@click.option(
    "--latency-ms",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Decision latency: fills at the touch this long after the signal's row.",
)
@click.option(
    "--cost-per-share",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Cost per share (contract) per fill, quote currency.",
)
@click.option(
    "--cost-bps",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Cost per fill in basis points of notional.",
)
@click.option(
    "--quantity",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Shares per trade.",
)
@click.option(
    "--sweep",
    default=",".join(map(str, DEFAULT_SWEEP)),
    show_default=True,
    help="Thresholds of the threshold sweep (comma-separated).",
)
@REGISTRY
@FORMAT
@SKIP_BAD
@device("cpu")
@threads("Torch CPU threads (as the daemon's default; more oversubscribe a busy machine).")
@click.option(
    "--batch",
    default=256,
    show_default=True,
    type=click.IntRange(1),
    help="Windows per model call.",
)
@click.option(
    "--scorer",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "incremental", "full-window"]),
    help=(
        "How windows are scored: auto scores a causal artifact incrementally (cached per-row "
        "features, one new row per event) on the CPU and others by full windows; full-window "
        "forces a window per row (the same probabilities, for comparison)."
    ),
)
@click.option(
    "--full-window",
    "full_window",
    is_flag=True,
    help="Same as --scorer full-window.",
)
@click.option(
    "--max-rows",
    type=click.IntRange(1),
    default=None,
    help="Stop after this many feature rows (quick looks).",
)
@ray
def backtest(
    files,
    model_path,
    as_json,
    plots_dir,
    threshold,
    latency_ms,
    cost_per_share,
    cost_bps,
    quantity,
    sweep,
    registry,
    fmt,
    skip_bad,
    device,
    threads,
    batch,
    scorer,
    full_window,
    max_rows,
    ray_address,
) -> None:
    """Replay FILES in-process through MODEL: classification report, trading P&L, plots.

    With --ray, one Ray task per unit of files (the files of each instrument, in order) and
    the results merged: the same report as in one process (lobstream.replay.distributed)."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from lobstream.replay.backtest.report import backtest_report
    from lobstream.replay.distributed.session import RayUnavailable
    from lobstream.replay.errors import DataError

    if full_window:
        if scorer == "incremental":
            raise click.UsageError("--full-window contradicts --scorer incremental")
        scorer = "full-window"
    check_ray_address(ray_address)
    if ray_address is not None and max_rows is not None:
        raise click.UsageError(
            "--max-rows cuts the one stream of all files at a row; with --ray each unit is its "
            "own stream: give fewer or shorter files instead"
        )
    reg = registry_from(registry)
    err = Console(stderr=True)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=as_json,
    ) as progress:
        task = progress.add_task("backtest", total=None)

        def on_progress(events: int, rows: int, windows: int) -> None:
            progress.update(
                task,
                description=(f"backtest: {events:,} events, {rows:,} rows, {windows:,} windows"),
            )

        def on_unit(done: int, total: int) -> None:
            progress.update(task, description=f"backtest on Ray: {done}/{total} units done")

        try:
            summary = backtest_report(
                files,
                model_path,
                trading=dict(
                    threshold=threshold,
                    latency_ns=int(round(latency_ms * 1e6)),
                    cost_per_share=cost_per_share,
                    cost_bps=cost_bps,
                    quantity=quantity,
                ),
                thresholds=_thresholds(sweep),
                registry=reg,
                fmt=fmt,
                device=device,
                threads=threads,
                batch=batch,
                skip_bad=skip_bad,
                scorer=scorer,
                max_rows=max_rows,
                ray_address=ray_address,
                plots_dir=plots_dir,
                on_progress=on_progress,
                on_unit=on_unit,
            )
        except (RayUnavailable, DataError, ValueError) as exc:
            # a live progress leaves its last frame on the screen: the error gets a clean line
            progress.remove_task(task)
            if isinstance(exc, RayUnavailable):
                raise click.UsageError(str(exc)) from None
            raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(summary))
    else:
        console = Console()
        # wide tables stay readable when piped to a file (rich assumes 80 columns there)
        _tables(console if console.is_terminal else Console(width=160), summary)


def _tables(console, s: dict) -> None:
    from rich.table import Table

    m, t = s["metrics"], s["trading"]
    lab = s["model"]["label"] or {}
    kind = s["model"]["label_kind"]
    console.print(
        f"{s['n_events']:,} events -> {s['n_rows']:,} rows -> {s['n_windows']:,} windows "
        f"({s['n_scored']:,} labelled) in {s['seconds']:.1f} s ({s['windows_per_s']:,.0f} "
        f"windows/s, {s.get('scorer', 'full-window')} scorer); model {s['model']['arch']} "
        f"T={s['model']['T']}; label {kind} "
        f"(k = {lab.get('horizon')} {lab.get('unit')}, alpha {lab.get('alpha'):.3g}"
        f"{'' if 'kind' in lab else ', kind not in the manifest: smoothed'})"
    )
    cls = Table(title=f"classification (argmax vs the artifact's {kind} labels, same rows)")
    cls.add_column("model")
    keys = ("accuracy", "f1_macro", "f1_weighted", "mcc", "kappa")
    for col in keys:
        cls.add_column(col, justify="right")
    cls.add_row(str(s["model"]["arch"]), *(f"{m[k]:.4f}" for k in keys))
    for name, b in s.get("baselines", {}).items():
        if name == "trend":
            name = f"trend ({b['rule']['direction']}, k={b['rule']['lookback_rows']})"
        elif name == "majority":
            name = f"majority ({('down', 'flat', 'up')[b['class']]})"
        cls.add_row(name, *(f"{b[k]:.4f}" for k in keys))
    console.print(cls)
    if s.get("heads"):
        _heads_table(console, s["heads"], float(t["config"]["threshold"]))
    conf = Table(title="confusion (rows true, columns predicted)")
    conf.add_column("")
    names = ("down", "flat", "up")
    for n in names:
        conf.add_column(n, justify="right")
    for n, row in zip(names, m["confusion"], strict=True):
        conf.add_row(n, *(f"{v:,}" for v in row))
    console.print(conf)
    cfg = t["config"]
    tr = Table(
        title=(
            f"trading: latency {cfg['latency_ns'] / 1e6:g} ms, horizon {cfg['horizon']:g} "
            f"{cfg['horizon_unit']}, costs {cfg['cost_per_share']:g}/share + {cfg['cost_bps']:g} bps"
        )
    )
    cols = (
        "threshold",
        "n_trades",
        "hit_rate",
        "gross_pnl",
        "costs",
        "net_pnl",
        "mean_pnl_per_trade",
        "turnover",
        "sharpe",
        "max_drawdown",
    )
    for col in cols:
        tr.add_column(col.replace("_pnl_per_trade", "/trade"), justify="right")
    for row in t["sweep"]:
        mark = " *" if abs(row["threshold"] - cfg["threshold"]) < 1e-12 else ""
        tr.add_row(f"{row['threshold']:g}{mark}", *(_cell(row[c]) for c in cols[1:]))
    if not any(abs(r["threshold"] - cfg["threshold"]) < 1e-12 for r in t["sweep"]):
        tr.add_row(f"{cfg['threshold']:g} *", *(_cell(t[c]) for c in cols[1:]))
    console.print(tr)
    per = t.get("per_instrument", {})
    if len(per) > 1:
        pi = Table(title=f"trading per instrument at threshold {cfg['threshold']:g}")
        pi.add_column("instrument")
        for col in cols[1:]:
            pi.add_column(col.replace("_pnl_per_trade", "/trade"), justify="right")
        for sym, row in per.items():
            pi.add_row(sym, *(_cell(row[c]) for c in cols[1:]))
        console.print(pi)
    if s.get("plots"):
        console.print("plots: " + ", ".join(s["plots"]))


def _heads_table(console, heads: list[dict], threshold: float) -> None:
    """One row per head of a multi-horizon artifact: its label, the model against that head's
    baselines, and its trading at the chosen threshold (held for that head's horizon); the
    tables above and below are the primary head's (head 0)."""
    from rich.table import Table

    tab = Table(title=f"every head (tables above and below: head 0); trading at {threshold:g}")
    for col in ("head", "k", "n_scored", "macro-F1", "trend", "majority", "trades", "net_pnl"):
        tab.add_column(col, justify="left" if col == "head" else "right")
    for h in heads:
        lab, b, tr = h["model"]["label"], h["baselines"], h["trading"]
        tab.add_row(
            str(h["head"]),
            f"{lab['horizon']:g} {lab.get('unit', 'events')}",
            f"{h['n_scored']:,}",
            f"{h['metrics']['f1_macro']:.4f}",
            f"{b['trend']['f1_macro']:.4f}" if "trend" in b else "-",
            f"{b['majority']['f1_macro']:.4f}" if "majority" in b else "-",
            f"{tr['n_trades']:,}",
            _cell(tr["net_pnl"]),
        )
    console.print(tab)


def _cell(v) -> str:
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:,.4f}" if abs(v) < 100 else f"{v:,.2f}"
