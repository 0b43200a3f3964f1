"""``lobstream train``: files -> dataset -> training -> test vs baselines -> artifact."""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
from click.core import ParameterSource

from lobstream.models.zoo import ARCHITECTURES
from lobstream.replay.training.sweep import (
    sweep_options,  # train --sweep [--ray]: lobstream.replay.training.sweep
)

logger = logging.getLogger(__name__)


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


def _column(labels: np.ndarray, h: int) -> np.ndarray:
    return labels if labels.ndim == 1 else labels[:, h]


def _trend_lookback(ds: Any, head: int = 0) -> int:
    """Rows of the trend baseline's mean: the label horizon (of ``head``), in rows.

    In events that is ``k``; in seconds, ``h`` times the training part's rows per second
    (the smoothed label's past window holds about that many rows). Clipped to ``[1, T]``.
    """
    label = ds.heads[head]
    if label.unit == "events":
        k = int(label.horizon)
    else:
        rows, secs = 0, 0.0
        for s in ds.streams:
            a, b = s.parts["train"]
            if b - a > 1:
                rows += b - a - 1
                secs += float(ds.meta["ts_event"][b - 1] - ds.meta["ts_event"][a]) / 1e9
        k = int(round(label.horizon * rows / secs)) if secs > 0 else 1
    return max(1, min(k, ds.window))


def run_training(
    files: list[str],
    *,
    arch: str | None,
    horizon: float,
    horizon_unit: str = "events",
    alpha: float | None = None,
    label_kind: str = "future",
    window: int = 100,
    levels: int = 10,
    features: str = "zscore",
    split: tuple[float, float] = (0.7, 0.15),
    max_events: int | None = None,
    eval_stride: int = 1,
    train_config: Any = None,
    model_config: dict[str, Any] | None = None,
    out: str | Path | None = None,
    progress=None,
    status=None,
    command: str | None = None,
    init: str | Path | None = None,
    freeze_layers: str = "none",
    horizons: tuple[float, ...] | None = None,
    loss_weights: tuple[float, ...] | None = None,
) -> dict[str, Any]:
    """Build the dataset, fit baselines, train, test, and export (when ``out`` is given).

    Returns a JSON-ready summary (what goes into the manifest, plus the artifact's SHA-256).
    ``progress`` receives each epoch's history entry; ``status`` short phase messages.
    ``label_kind``: ``"future"`` (leak-free, the default), ``"smoothed"`` (the literature's) or
    ``"spread"`` (see :mod:`lobstream.kernels.labels`).

    ``horizons``: one head per horizon (a multi-horizon model, :mod:`lobstream.models.heads`;
    ``horizon`` is then ignored), trained with ``loss_weights`` (equal when None); the first
    horizon is the primary head.

    ``init``: fine-tune the artifact at this path instead of a fresh model (``arch`` None: the
    parent's; window, levels and feature kind must be the parent's, see
    :mod:`lobstream.models.finetune`); ``freeze_layers`` ``"conv"`` trains only its head.
    """
    from lobstream.models.artifact import export_model
    from lobstream.models.baselines import baseline_reports
    from lobstream.models.train import (
        TrainConfig,
        evaluate,
        pick_device,
        seed_everything,
        train_model,
    )
    from lobstream.models.zoo import build_model
    from lobstream.models.manifest import LabelDef
    from lobstream.replay.training.dataset import build_dataset

    say = status or (lambda msg: None)
    tc = train_config or TrainConfig()
    hs = tuple(horizons) if horizons else (horizon,)
    lw = tuple(loss_weights) if loss_weights else tuple([1.0 / len(hs)] * len(hs))
    if len(lw) != len(hs):
        raise ValueError(f"{len(lw)} loss weights for {len(hs)} horizons")
    if len(hs) > 1:
        tc = dataclasses.replace(tc, loss_weights=lw)
    t0 = time.perf_counter()
    parent = None
    if init is not None:
        from lobstream.models.finetune import freeze, init_from_artifact

        if model_config:
            raise ValueError("--init takes the parent's model config; give no model config")
        expect = {"T": window, "L": levels, "feature_kind": features, "heads": len(hs)}
        if arch is not None:
            expect["arch"] = arch
        # checked before reading any data: a mismatch fails in a second, not after the dataset
        init_model, parent = init_from_artifact(init, expect)
        arch = parent["arch"]
        frozen = set(freeze(init_model, freeze_layers))
        parent = {
            "artifact": parent["artifact"],
            "sha256": parent["sha256"],
            "arch": arch,
            "label": parent["label"],
            "freeze": freeze_layers,
            "frozen_parameters": sum(
                p.numel() for n, p in init_model.named_parameters() if n in frozen
            ),
        }
        say(
            f"fine-tuning {init} (sha256 {parent['sha256'][:16]}...), freeze {freeze_layers}: "
            f"{parent['frozen_parameters']:,} parameters frozen"
        )
    elif arch is None:
        raise ValueError("give an architecture (or init, whose architecture is then taken)")
    say(f"reading {len(files)} file(s) and building rows, labels, windows")
    ds = build_dataset(
        files,
        [LabelDef(h, horizon_unit, alpha, label_kind) for h in hs],
        window=window,
        levels=levels,
        fractions=split,
        features=features,
        max_events=max_events,
    )
    say(
        f"{ds.rows.shape[0]} rows; windows {[len(w) for w in ds.parts.values()]} "
        f"(train/val/test); {label_kind} label, alpha {ds.alpha:.3g}; "
        f"balance {ds.class_balance()}"
    )
    tr, va, te = ds.parts["train"], ds.parts["val"], ds.parts["test"]
    if eval_stride > 1:
        # neighbouring windows share T - 1 rows: a strided subset scores almost the same
        va = va.subset(np.arange(0, len(va), eval_stride))
        te = te.subset(np.arange(0, len(te), eval_stride))
    say(
        "fitting baselines (majority class, logistic regression on OFI + imbalances, "
        "trend of the window's mids)"
    )
    bases = [
        baseline_reports(
            ds.raw,
            levels,
            window,
            (tr.ends, _column(tr.labels, h)),
            {
                "validation": (va.ends, _column(va.labels, h)),
                "test": (te.ends, _column(te.labels, h)),
            },
            mid=ds.meta["mid"],
            alpha=ds.alphas[h],
            trend_lookback=_trend_lookback(ds, h),
        )
        for h in range(len(hs))
    ]
    base = bases[0]
    say(f"trend baseline: {[b['trend']['rule'] for b in bases]}")
    seed_everything(tc.seed)
    if parent is not None:
        model = init_model
    else:
        cfg = dict(model_config or {})
        if len(hs) > 1:
            cfg["n_classes"] = 3 * len(hs)  # one (down, flat, up) block per head
        model = build_model(arch, T=window, levels=levels, **cfg)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"training {arch} ({n_train:,} of {n_params:,} parameters) on {tc.device}")
    res = train_model(model, tr, va, tc, progress=progress)
    say("scoring the test split")
    test = evaluate(
        res.model, te, batch_size=tc.eval_batch_size, device=pick_device(tc.device),
        loss_weights=lw,
    )  # fmt: skip
    val_h = res.val_metrics.get("heads", [res.val_metrics])
    test_h = test.get("heads", [test])
    summary: dict[str, Any] = {
        "feature": ds.spec.to_dict(),
        "label": ds.label_dict(),
        "trained_on": {**ds.trained_on(), **({"init": parent} if parent else {})},
        "metrics": {"validation": val_h[0], "test": test_h[0]},
        "baselines": base,
        "training": {
            **tc.to_dict(),
            "best_epoch": res.best_epoch,
            "history": res.history,
            "seconds": round(time.perf_counter() - t0, 1),
            "parameters": n_params,
            "trainable_parameters": n_train,
            "subsampling": "per-epoch random subset of max_train_windows (seed, epoch)",
            "eval_stride": eval_stride,
        },
        "reproduce": command,
    }
    if len(hs) > 1:
        summary["heads"] = [
            {
                "label": ds.label_dict(h),
                "loss_weight": lw[h],
                "metrics": {"validation": val_h[h], "test": test_h[h]},
                "baselines": bases[h],
                "class_balance": ds.class_balance(h),
            }
            for h in range(len(hs))
        ]
        summary["selection"] = {
            "rule": "validation macro-F1 of each head weighted by its loss weight",
            "validation": res.val_metrics["f1_macro"],
            "test": test["f1_macro"],
        }
    if out is not None:
        summary["sha256"] = export_model(
            res.model.cpu(), out, {k: v for k, v in summary.items() if k != "sha256"}
        )
        say(f"wrote {out}")
    return summary


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
    from rich.table import Table

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
    arch = parent["arch"] if parent else arch
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
    if report_json:
        Path(report_json).write_text(json.dumps(summary, indent=1, default=_np_default))
    click.echo(f"{out}  sha256 {summary['sha256']}")
    if parent:
        click.echo(
            f"fine-tuned from {parent['artifact']}  sha256 {parent['sha256']}  "
            f"freeze {parent['freeze']} ({parent['frozen_parameters']:,} parameters frozen)"
        )


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
