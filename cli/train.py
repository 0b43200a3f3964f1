"""``lobstream train``: the command line of the training pipeline
(:func:`lobstream.replay.training.pipeline.run_training`) and of a sweep of it
(:mod:`lobstream.replay.training.sweep`), and their result tables."""

from __future__ import annotations

import shlex
from typing import Any

import click
from click.core import ParameterSource

from lobstream.cli.options import FILES, check_ray_address, ray, threads
from lobstream.models.zoo import ARCHITECTURES
from lobstream.replay.errors import DataError
from lobstream.replay.training.sweep import SWEEPABLE

# the default architecture: the bundled model's, small enough to train on a CPU (the
# full-window deeplob is far slower there; benchmarks: README)
DEFAULT_ARCH = "binctabl"


def _alpha(value: str) -> float | None:
    if value == "auto":
        return None
    try:
        a = float(value)
    except ValueError:
        raise click.BadParameter(f"expected a number >= 0 or 'auto', got {value!r}") from None
    if not a >= 0:
        raise click.BadParameter(f"alpha must be >= 0, got {a}")
    return a


def _tick_scale(value: str) -> float | None:
    if value == "auto":
        return None
    try:
        s = float(value)
    except ValueError:
        raise click.BadParameter(f"expected a number > 0 or 'auto', got {value!r}") from None
    if not s > 0:
        raise click.BadParameter(f"--tick-scale must be > 0, got {s}")
    return s


def _split(value: str) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"expected two shares 'TRAIN,VAL' such as 0.7,0.15, got {value!r}"
        ) from None
    return a, b


def _summary_rows(result: dict[str, Any]) -> list[tuple[str, str, float, float, float, float]]:
    rows = []
    for name, part in (("model", result["metrics"]), *result["baselines"].items()):
        if "rule" in part:  # the trend baseline: say which rule was fitted
            name = f"{name} ({part['rule']['direction']}, k={part['rule']['lookback_rows']})"
        for split in ("validation", "test"):
            m = part[split]
            rows.append((name, split, m["f1_macro"], m["f1_weighted"], m["accuracy"], m["mcc"]))
    return rows


@click.command("train")
@FILES
@click.option(
    "--arch", type=click.Choice(sorted(ARCHITECTURES)), default=DEFAULT_ARCH, show_default=True
)
@click.option(
    "--horizon",
    type=float,
    default=None,
    help="Label horizon k (one head); 50 when neither --horizon nor --horizons is given.",
)
@click.option(
    "--horizons",
    default=None,
    help=(
        "Several label horizons, comma-separated (e.g. 10,50,100): one network with a head "
        "per horizon, the first the primary (what single-head readers see)."
    ),
)
@click.option(
    "--loss-weights",
    default=None,
    help="With --horizons: per-head loss weights, comma-separated (scaled to sum 1; default "
    "equal). Early stopping follows the heads' validation macro-F1 with the same weights.",
)
@click.option(
    "--horizon-unit",
    type=click.Choice(["events", "seconds"]),
    default="events",
    show_default=True,
    help="k counts feature rows (events) or seconds.",
)
@click.option(
    "--label",
    type=click.Choice(["future", "smoothed", "spread"]),
    default="future",
    show_default=True,
    help=(
        "future: mean of the next k mids vs the current mid (leak-free); smoothed: vs the mean "
        "of the previous k (the literature's; its past half is inside the window); spread: "
        "future with alpha = the training rows' mean relative spread."
    ),
)
@click.option(
    "--alpha",
    default="auto",
    show_default=True,
    help=(
        "Threshold on the label's relative change, or 'auto': balanced on train "
        "(--label spread: the mean relative spread)."
    ),
)
@click.option("--window", "-T", type=int, default=100, show_default=True, help="Rows per window.")
@click.option("--levels", "-L", type=int, default=10, show_default=True)
@click.option(
    "--features",
    type=click.Choice(["zscore", "ticks_from_mid"]),
    default="zscore",
    show_default=True,
    help="Row normalisation (z-score stats from train only).",
)
@click.option(
    "--split",
    default="0.7,0.15",
    show_default=True,
    help="Shares of time for train and validation; test gets the rest.",
)
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--weight-decay", type=float, default=1e-2, show_default=True)
@click.option(
    "--patience",
    type=int,
    default=3,
    show_default=True,
    help="Early stopping: epochs without a better validation macro-F1.",
)
@click.option(
    "--max-train-windows",
    type=int,
    default=None,
    help="Per epoch, train on a seeded random subset of this many windows.",
)
@click.option(
    "--max-eval-windows",
    type=int,
    default=None,
    help="Validate each epoch on an evenly strided subset of this many windows.",
)
@click.option(
    "--eval-stride",
    type=int,
    default=1,
    show_default=True,
    help="Score validation and test (model and baselines) on every N-th window.",
)
@click.option(
    "--max-events",
    type=int,
    default=None,
    help="Read only the first N events of each file (quick runs).",
)
@click.option(
    "--chunk-rows",
    type=int,
    default=128,
    show_default=True,
    help="Causal models: rows per sequence-training chunk (chunk_rows - T + 1 windows).",
)
@click.option(
    "--chunks-per-step",
    type=int,
    default=32,
    show_default=True,
    help="Causal models: chunks, from different places of the day, per optimizer step.",
)
@click.option(
    "--per-window",
    is_flag=True,
    help="Causal models: train per window like any other model (for comparison).",
)
@click.option(
    "--mirror",
    is_flag=True,
    help=(
        "Also train on the bid/ask mirror of every training window (sides swapped, down and "
        "up flipped); needs --features ticks_from_mid. Validation and test stay real."
    ),
)
@click.option(
    "--tick-scale",
    default="1",
    show_default=True,
    help=(
        "--features ticks_from_mid: divide prices in ticks from the mid by this, or 'auto': "
        "the training rows' mean distance from the mid over the top --levels (inputs of about "
        "unit size for networks without an input normalisation layer)."
    ),
)
@click.option(
    "--split-scope",
    type=click.Choice(["common", "instrument"]),
    default="common",
    show_default=True,
    help=(
        "Cut train/validation/test at the same instants for every file (one market), or at "
        "each instrument's own time quantiles (files of different days or venues); with "
        "several instruments the report scores each one's test part."
    ),
)
@click.option(
    "--curves",
    type=click.Path(dir_okay=False),
    default=None,
    help="PNG of train loss and validation macro-F1 per epoch, baselines as lines "
    "(default: MODEL.curves.png beside --out).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="cpu, cuda, or auto (CUDA with mixed precision when present).",
)
@threads("torch CPU threads (the machine is shared).")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="Artifact to write (MODEL.pt)."
)
@click.option(
    "--init",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help=(
        "Fine-tune this artifact (MODEL.pt) instead of a fresh model: --window, --levels and "
        "--features must be its own (refused otherwise); --arch is taken from it when not "
        "given and refused when it differs. Normalisation comes from the new files (zscore: "
        "their training rows). Its path and SHA-256 go into the new manifest."
    ),
)
@click.option(
    "--freeze",
    type=click.Choice(["none", "conv"]),
    default="none",
    show_default=True,
    help=(
        "With --init: conv freezes the feature layers and trains the head only. Frozen: cnn "
        "the conv stack; cnn_causal the convs of row_features; deeplob, deeplob_causal the "
        "conv blocks and inception branches (LSTM and output layer train); binctabl BiN and "
        "both bilinear layers (TABL trains); hrnn both LSTMs (output layer trains)."
    ),
)
@click.option(
    "--report-json",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the summary (metrics, baselines, history) as JSON here.",
)
@click.option(
    "--sweep",
    "sweep",
    default=None,
    metavar="SPEC",
    help=(
        "Train a grid instead of one model, e.g. 'horizon=10,50 alpha=auto,0.0002 "
        f"features=zscore,ticks_from_mid arch=binctabl,cnn' (sweepable: "
        f"{', '.join(SWEEPABLE)}); prints the table, writes the best by validation "
        "macro-F1 to --out. With --ray, one Ray task per trial."
    ),
)
@ray
def train(
    files,
    arch,
    horizon,
    horizons,
    loss_weights,
    horizon_unit,
    label,
    alpha,
    window,
    levels,
    features,
    split,
    epochs,
    batch_size,
    lr,
    weight_decay,
    patience,
    max_train_windows,
    max_eval_windows,
    eval_stride,
    max_events,
    chunk_rows,
    chunks_per_step,
    per_window,
    mirror,
    tick_scale,
    split_scope,
    curves,
    seed,
    device,
    threads,
    out,
    init,
    freeze,
    report_json,
    sweep,
    ray_address,
) -> None:
    """Build windows and labels from FILES, train ARCH, test against baselines, export."""
    from rich.console import Console

    from lobstream.models.train import TrainConfig
    from lobstream.replay.training.pipeline import resolve_heads, run_training, write_json

    console = Console(stderr=True)
    tc = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        patience=patience,
        seed=seed,
        max_train_windows=max_train_windows,
        max_eval_windows=max_eval_windows,
        device=device,
        threads=threads,
        chunk_rows=chunk_rows,
        chunks_per_step=chunks_per_step,
        sequence=not per_window,
    )
    # what one run and every trial of a sweep take
    run_kw = dict(
        arch=arch,
        horizon_unit=horizon_unit,
        alpha=_alpha(alpha),
        label_kind=label,
        window=window,
        levels=levels,
        features=features,
        split=_split(split),
        max_events=max_events,
        eval_stride=eval_stride,
        train_config=tc,
        mirror=mirror,
        split_scope=split_scope,
        tick_scale=_tick_scale(tick_scale),
    )
    if sweep is not None:
        check_ray_address(ray_address)
        if init is not None:
            raise click.UsageError("--sweep trains fresh models: it does not take --init")
        _sweep(list(files), sweep, ray_address, run_kw, horizon, horizons, loss_weights,
               out, report_json, threads)  # fmt: skip
        return
    if ray_address is not None:
        raise click.UsageError("--ray on train runs a --sweep: give --sweep SPEC")

    bar = _EpochBar(console, epochs)

    def progress(e: dict[str, Any]) -> None:
        bar.done()
        console.print(
            f"epoch {e['epoch']:>3}/{epochs}  loss {e['train_loss']:.4f}  "
            f"val macro-F1 {e['val_f1_macro']:.4f}  acc {e['val_accuracy']:.4f}  "
            f"{e['seconds']:.0f}s{'  [green]best[/green]' if e['best'] else ''}"
        )

    ctx = click.get_current_context()
    try:
        hs, lw = resolve_heads(horizon, horizons, loss_weights)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if horizon is None and horizons is None:  # the default: spelt out in the reproduce line
        ctx.params["horizon"] = hs[0]
    if freeze != "none" and init is None:
        raise click.BadParameter("--freeze needs --init (a parent model)", param_hint="--freeze")
    if init is not None and ctx.get_parameter_source("arch") is ParameterSource.DEFAULT:
        arch = ctx.params["arch"] = run_kw["arch"] = None  # the parent's; not in the reproduce line
    command = _command(ctx)
    from lobstream.replay.training.curves import curves_path

    try:
        summary = run_training(
            list(files),
            **run_kw,
            horizon=hs[0],
            horizons=hs if len(hs) > 1 else None,
            loss_weights=lw,
            out=out,
            progress=progress,
            step_progress=bar.step,
            status=lambda m: console.print(f"[dim]{m}[/dim]"),
            command=command,
            init=init,
            freeze_layers=freeze,
            curves_png=curves or curves_path(out),
        )
    except (DataError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        bar.done()
    parent = summary["trained_on"].get("init")
    _print_tables(summary, parent["arch"] if parent else arch)
    if "per_instrument" in summary:
        _print_instruments(summary["per_instrument"])
    if report_json:
        write_json(report_json, summary)
    click.echo(f"{out}  sha256 {summary['sha256']}")
    if parent:
        click.echo(
            f"fine-tuned from {parent['artifact']}  sha256 {parent['sha256']}  "
            f"freeze {parent['freeze']} ({parent['frozen_parameters']:,} parameters frozen)"
        )


class _EpochBar:
    """Progress within an epoch: a rich bar of training windows with windows/s and the
    running loss, one bar an epoch (transient: the epoch's summary line replaces it), on a
    terminal only."""

    def __init__(self, console: Any, epochs: int) -> None:
        self.console, self.epochs = console, epochs
        self.bar = self.task = None
        self.epoch = 0

    def step(self, s: dict[str, Any]) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        if not self.console.is_terminal:  # a log file gets the per-epoch lines only
            return
        if self.bar is None or s["epoch"] != self.epoch:
            self.done()
            self.epoch = s["epoch"]
            self.bar = Progress(
                TextColumn(f"epoch {s['epoch']}/{self.epochs}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("windows  {task.fields[rate]} windows/s  loss {task.fields[loss]}"),
                console=self.console,
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=s["total"], rate="-", loss="-")
        t = self.bar.tasks[0]
        rate = s["windows"] / t.elapsed if t.elapsed else 0.0
        self.bar.update(
            self.task, completed=s["windows"], rate=f"{rate:,.0f}", loss=f"{s['loss']:.4f}"
        )

    def done(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _sweep(files, spec, ray_address, run_kw, horizon, horizons, loss_weights, out, report_json,
           threads) -> None:  # fmt: skip
    """``train --sweep``: run the grid, print its table, write the best artifact."""
    from rich.console import Console
    from rich.table import Table

    from lobstream.replay.distributed.session import RayUnavailable
    from lobstream.replay.training.sweep import (
        parse_sweep,
        sweep_base,
        sweep_to,
        trials,
        write_sweep_report,
    )

    try:
        grid = parse_sweep(spec)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--sweep") from None
    try:
        base = sweep_base(
            grid, horizon=horizon, horizons=horizons, loss_weights=loss_weights, **run_kw
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    err = Console(stderr=True)
    n = len(trials(grid))
    err.print(f"[dim]sweep: {n} trial(s) of {', '.join(grid)}{' on Ray' if ray_address else ''}")

    def show(r: dict) -> None:
        err.print(
            f"[dim]trial {r['params']}: val macro-F1 {r['val_f1_macro']:.4f}, test "
            f"{r['test_f1_macro']:.4f} ({r['seconds']:.0f} s)[/dim]"
        )

    try:
        results, best = sweep_to(
            files, grid, base, out, ray_address=ray_address, cpus_per_trial=threads, on_trial=show
        )
    except RayUnavailable as exc:
        raise click.UsageError(str(exc)) from None
    except (DataError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    table = Table(title=f"sweep: {n} trial(s) on the chronological split; * best validation")
    for h in (*grid, "alpha", "val macro-F1", "test macro-F1", "test acc", "best baseline test"):
        table.add_column(h, justify="left" if h in grid else "right")
    for k, r in enumerate(results):
        bb = r["best_baseline_test_f1_macro"]
        table.add_row(
            *(str(r["params"][g]) + (" *" if k == best and i == 0 else "") for i, g in
              enumerate(grid)),
            f"{r['alpha']:.3g}",
            f"{r['val_f1_macro']:.4f}",
            f"{r['test_f1_macro']:.4f}",
            f"{r['test_accuracy']:.4f}",
            "" if bb is None else f"{bb:.4f} ({r['best_baseline']})",
        )  # fmt: skip
    Console().print(table)
    if report_json:
        write_sweep_report(report_json, grid, results, best)
    click.echo(
        f"{out}  sha256 {results[best]['summary']['sha256']}  best {results[best]['params']}"
    )


def _print_tables(summary: dict[str, Any], arch: str) -> None:
    """One table per head: the model's and the baselines' scores on validation and test."""
    from rich.console import Console
    from rich.table import Table

    heads = summary.get("heads") or [summary]
    for i, head in enumerate(heads):
        lab = head["label"]
        which = (
            f"head {i} of {len(heads)} (loss weight {head['loss_weight']:.3g}), "
            if len(heads) > 1
            else ""
        )
        table = Table(
            title=(
                f"{arch}: {which}macro-F1 etc. on the chronological split; label {lab['kind']} "
                f"(k = {lab['horizon']:g} {lab['unit']}, alpha {lab['alpha']:.3g})"
            )
        )
        for h in ("model", "split", "macro-F1", "weighted-F1", "accuracy", "MCC"):
            table.add_column(h, justify="right" if h not in ("model", "split") else "left")
        for r in _summary_rows(head):
            table.add_row(r[0], r[1], *(f"{x:.4f}" for x in r[2:]))
        Console().print(table)


def _print_instruments(per: dict[str, Any]) -> None:
    """Test macro-F1 of the model and each instrument's own baselines, per instrument."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="test macro-F1 per instrument (baselines fitted on its own train part)")
    for h in ("instrument", "test windows", "model", "majority", "logistic", "trend"):
        table.add_column(h, justify="left" if h == "instrument" else "right")
    for name, e in per.items():
        if "model" not in e:
            table.add_row(name, str(e["windows"]["test"]), e.get("note", ""), "", "", "")
            continue
        b = e.get("baselines", {})
        table.add_row(
            name,
            str(e["windows"]["test"]),
            f"{e['model']['test']['f1_macro']:.4f}",
            *(f"{b[k]['test']['f1_macro']:.4f}" if k in b else "-" for k in
              ("majority", "logistic", "trend")),
        )  # fmt: skip
    Console().print(table)


def _command(ctx: click.Context) -> str:
    """The command line that reproduces this run, every option spelt out (files by name)."""
    p = dict(ctx.params)
    words = ["lobstream", "train", *(str(f) for f in p.pop("files"))]
    for k, v in p.items():
        if v is None or v is False or k in ("out", "report_json"):
            continue
        flag = f"--{k.replace('_', '-')}"
        words += [flag] if v is True else [flag, str(v)]  # a flag takes no value
    words += ["--out", str(p["out"])]
    return shlex.join(words)
