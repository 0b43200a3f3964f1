"""``lobstream train``: the command line of the training pipeline
(:func:`lobstream.replay.training.pipeline.run_training`) and its result tables."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import click
import numpy as np
from click.core import ParameterSource

from lobstream.models.zoo import ARCHITECTURES
from lobstream.replay.training.pipeline import run_training
from lobstream.replay.training.sweep import (
    sweep_options,  # train --sweep [--ray]: lobstream.replay.training.sweep
)


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
@sweep_options
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--arch", type=click.Choice(sorted(ARCHITECTURES)), default="deeplob", show_default=True
)
@click.option("--horizon", type=float, default=None, help="Label horizon k (one head).")
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
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="cpu, cuda, or auto (CUDA with mixed precision when present).",
)
@click.option(
    "--threads",
    type=int,
    default=1,
    show_default=True,
    help="torch CPU threads (the machine is shared).",
)
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
    seed,
    device,
    threads,
    out,
    init,
    freeze,
    report_json,
) -> None:
    """Build windows and labels from FILES, train ARCH, test against baselines, export."""
    from rich.console import Console

    from lobstream.models.train import TrainConfig
    from lobstream.replay.errors import DataError

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

    def progress(e: dict[str, Any]) -> None:
        console.print(
            f"epoch {e['epoch']:>3}/{epochs}  loss {e['train_loss']:.4f}  "
            f"val macro-F1 {e['val_f1_macro']:.4f}  acc {e['val_accuracy']:.4f}  "
            f"{e['seconds']:.0f}s{'  [green]best[/green]' if e['best'] else ''}"
        )

    ctx = click.get_current_context()
    hs, lw = _heads_options(horizon, horizons, loss_weights)
    if freeze != "none" and init is None:
        raise click.BadParameter("--freeze needs --init (a parent model)", param_hint="--freeze")
    if init is not None and ctx.get_parameter_source("arch") is ParameterSource.DEFAULT:
        arch = ctx.params["arch"] = None  # the parent's; the reproduce line leaves it out
    command = _command(ctx)
    try:
        summary = run_training(
            list(files),
            arch=arch,
            horizon=hs[0],
            horizons=hs if len(hs) > 1 else None,
            loss_weights=lw,
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
            out=out,
            progress=progress,
            status=lambda m: console.print(f"[dim]{m}[/dim]"),
            command=command,
            init=init,
            freeze_layers=freeze,
        )
    except (DataError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    parent = summary["trained_on"].get("init")
    _print_tables(summary, parent["arch"] if parent else arch)
    if report_json:
        Path(report_json).write_text(json.dumps(summary, indent=1, default=_np_default))
    click.echo(f"{out}  sha256 {summary['sha256']}")
    if parent:
        click.echo(
            f"fine-tuned from {parent['artifact']}  sha256 {parent['sha256']}  "
            f"freeze {parent['freeze']} ({parent['frozen_parameters']:,} parameters frozen)"
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


def _heads_options(
    horizon: float | None, horizons: str | None, loss_weights: str | None
) -> tuple[tuple[float, ...], tuple[float, ...] | None]:
    """(horizons, loss weights) from --horizon / --horizons / --loss-weights."""
    from lobstream.models.heads import parse_horizons, parse_loss_weights

    if (horizon is None) == (horizons is None):
        raise click.UsageError("give either --horizon K or --horizons K1,K2,... (not both)")
    if horizons is None:
        if loss_weights is not None:
            raise click.BadParameter("needs --horizons", param_hint="--loss-weights")
        return (float(horizon),), None
    try:
        hs = parse_horizons(horizons)
        return hs, parse_loss_weights(loss_weights, len(hs))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


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


def _np_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o))
