"""The training pipeline: files -> dataset -> baselines -> training -> test -> artifact.

:func:`run_training` is what ``lobstream train`` (:mod:`lobstream.cli.train`), a sweep's
trials (:mod:`lobstream.replay.training.sweep`) and the benchmarks call; it needs no click, so
a Ray worker or a notebook imports it without the command line.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# the label horizon when none is given: the bundled model's (k = 50 rows), the middle of the
# 10 / 50 / 100 the literature and docs/MODEL.md report
DEFAULT_HORIZON = 50.0


def resolve_heads(
    horizon: float | None, horizons: str | None, loss_weights: str | None
) -> tuple[tuple[float, ...], tuple[float, ...] | None]:
    """(horizons, loss weights) of a run from one ``horizon`` or the comma-separated
    ``horizons`` (a head each) with their ``loss_weights``; the weights are None for one head.
    Neither given: one head of :data:`DEFAULT_HORIZON`. Raises ``ValueError`` for both given,
    or weights without ``horizons``."""
    from lobstream.models.heads import parse_horizons, parse_loss_weights

    if horizon is not None and horizons is not None:
        raise ValueError("give either --horizon K or --horizons K1,K2,... (not both)")
    if horizon is None and horizons is None:
        horizon = DEFAULT_HORIZON
    if horizons is None:
        if loss_weights is not None:
            raise ValueError("--loss-weights needs --horizons")
        return (float(horizon),), None
    hs = parse_horizons(horizons)
    return hs, parse_loss_weights(loss_weights, len(hs))


def write_json(path: str | Path, obj: Any) -> None:
    """``obj`` (a summary: numpy scalars and paths allowed) as indented JSON at ``path``."""
    import json

    Path(path).write_text(json.dumps(obj, indent=1, default=_json_default))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


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


def _parts(ds, eval_stride: int) -> tuple:
    """Train, validation and test windows; the last two strided by ``eval_stride``
    (neighbouring windows share T - 1 rows: a strided subset scores almost the same)."""
    tr, va, te = ds.parts["train"], ds.parts["val"], ds.parts["test"]
    if eval_stride > 1:
        va = va.subset(np.arange(0, len(va), eval_stride))
        te = te.subset(np.arange(0, len(te), eval_stride))
    return tr, va, te


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
    progress: Callable[[dict], None] | None = None,
    status: Callable[[str], None] | None = None,
    command: str | None = None,
    init: str | Path | None = None,
    freeze_layers: str = "none",
    horizons: tuple[float, ...] | None = None,
    loss_weights: tuple[float, ...] | None = None,
    mirror: bool = False,
    split_scope: str = "common",
    tick_scale: float | None = 1.0,
    step_progress: Callable[[dict], None] | None = None,
    curves_png: str | Path | None = None,
    train_filter: Callable[[Any, Any], Any] | None = None,
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

    ``mirror``: add the bid/ask mirror of every training window, label flipped
    (:mod:`lobstream.replay.training.augment`; ``ticks_from_mid`` features only). Validation,
    test and the baselines see the real rows only. ``split_scope``: see
    :func:`~lobstream.replay.training.dataset.build_dataset`; with several instruments the
    summary has ``per_instrument``: each one's test part, model and its own baselines.
    ``tick_scale``: ``ticks_from_mid`` prices divided by it (None: fitted on the training rows,
    see :func:`~lobstream.replay.training.dataset.build_dataset`).
    ``step_progress`` receives ``{epoch, windows, total, loss}`` after each optimizer step.
    ``curves_png``: write the training curves there (:mod:`lobstream.replay.training.curves`;
    the summary's ``curves`` holds the data). ``train_filter(ds, train_windows)``: the
    training windows to use (learning curves); baselines fit on the same windows.
    """
    from lobstream.models.artifact import export_model, resolve_device
    from lobstream.models.manifest import LabelDef
    from lobstream.models.train import (
        TrainConfig,
        evaluate,
        seed_everything,
        train_model,
    )
    from lobstream.replay.training.dataset import build_dataset

    say = status or (lambda msg: None)
    tc = train_config or TrainConfig()
    hs = tuple(horizons) if horizons else (horizon,)
    lw = _loss_weights(loss_weights, len(hs))
    if len(hs) > 1:
        tc = dataclasses.replace(tc, loss_weights=lw)
    t0 = time.perf_counter()
    init_model = parent = None
    if mirror and features != "ticks_from_mid":
        raise ValueError(
            "--mirror needs --features ticks_from_mid: z-scored prices have no exact mirror"
        )
    if init is not None:
        if model_config:
            raise ValueError("--init takes the parent's model config; give no model config")
        expect = {"T": window, "L": levels, "feature_kind": features, "heads": len(hs)}
        if arch is not None:
            expect["arch"] = arch
        # checked before reading any data: a mismatch fails in a second, not after the dataset
        init_model, parent = _parent(init, expect, freeze_layers, say)
        arch = parent["arch"]
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
        split_scope=split_scope,
        tick_scale=tick_scale,
    )
    say(
        f"{ds.rows.shape[0]} rows; windows {[len(w) for w in ds.parts.values()]} "
        f"(train/val/test); {label_kind} label, alpha {ds.alpha:.3g}; "
        f"balance {ds.class_balance()}"
    )
    tr, va, te = _parts(ds, eval_stride)
    if train_filter is not None:
        tr = train_filter(ds, tr)
    bases = _baselines(ds, levels, window, (tr, va, te), len(hs), say)
    fit_tr = tr
    if mirror:
        from lobstream.replay.training.augment import with_mirror

        tr = with_mirror(tr)
        say(f"mirror augmentation: {len(tr)} training windows (real and mirrored)")
    seed_everything(tc.seed)
    model = (
        init_model
        if init_model is not None
        else _fresh_model(arch, window, levels, model_config, len(hs))
    )
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"training {arch} ({n_train:,} of {n_params:,} parameters) on {tc.device}")
    res = train_model(model, tr, va, tc, progress=progress, step_progress=step_progress)
    say("scoring the test split")
    test = evaluate(
        res.model, te, batch_size=tc.eval_batch_size, device=resolve_device(tc.device),
        loss_weights=lw,
    )  # fmt: skip
    training = {
        **tc.to_dict(),
        "best_epoch": res.best_epoch,
        "history": res.history,
        "seconds": round(time.perf_counter() - t0, 1),
        "parameters": n_params,
        "trainable_parameters": n_train,
        "subsampling": "per-epoch random subset of max_train_windows (seed, epoch)",
        "eval_stride": eval_stride,
        "mirror": mirror,
        "training_windows": len(fit_tr),
        "training_rows": _n_rows(fit_tr),
    }
    summary = _summary(ds, parent, res.val_metrics, test, bases, lw, training, command)
    if len(ds.symbols) > 1 or len({s.instrument for s in ds.streams}) > 1:
        say("scoring each instrument's test part")
        summary["per_instrument"] = _per_instrument(ds, res.model, fit_tr, va, te, tc, lw)
    if out is not None:
        summary["sha256"] = export_model(
            res.model.cpu(), out, {k: v for k, v in summary.items() if k != "sha256"}
        )
        say(f"wrote {out}")
    if curves_png is not None:
        from lobstream.replay.training.curves import curves_data, plot_curves

        summary["curves"] = {"png": str(curves_png), **curves_data(summary)}
        plot_curves(curves_png, summary)
        say(f"wrote {curves_png}")
    return summary


def _n_rows(w: Any) -> int:
    """Distinct feature rows under the windows ``w`` (each window covers T rows)."""
    if len(w) == 0:
        return 0
    ends = np.sort(w.ends)
    # a window adds the rows past the previous window's end, at most T
    return int(w.window + np.minimum(np.diff(ends), w.window).sum())


def _stream_mask(ds: Any, ends: np.ndarray, inst: int) -> np.ndarray:
    mask = np.zeros(len(ends), bool)
    for s in ds.streams:
        if s.instrument == inst:
            mask |= (ends >= s.start) & (ends < s.stop)
    return mask


def _per_instrument(
    ds: Any, model: Any, tr: Any, va: Any, te: Any, tc: Any, lw: tuple[float, ...]
) -> dict[str, Any]:
    """Each instrument's validation and test windows: the model (primary head) beside
    baselines fitted on that instrument's own training windows."""
    from lobstream.models.artifact import resolve_device
    from lobstream.models.train import evaluate

    out: dict[str, Any] = {}
    for inst in sorted({s.instrument for s in ds.streams}):
        name = ds.symbols.get(inst, str(inst))
        m_tr, m_va, m_te = (_stream_mask(ds, w.ends, inst) for w in (tr, va, te))
        entry: dict[str, Any] = {
            "windows": {"train": int(m_tr.sum()), "val": int(m_va.sum()), "test": int(m_te.sum())}
        }
        if m_tr.sum() < 2 or not m_va.any() or not m_te.any():
            entry["note"] = "too few windows in a part to score"
            out[name] = entry
            continue
        sub = [w.subset(np.flatnonzero(m)) for w, m in ((tr, m_tr), (va, m_va), (te, m_te))]
        dev = resolve_device(tc.device)
        entry["model"] = {
            split: _primary(evaluate(model, w, batch_size=tc.eval_batch_size, device=dev,
                                     loss_weights=lw))
            for split, w in (("validation", sub[1]), ("test", sub[2]))
        }  # fmt: skip
        try:
            entry["baselines"] = _instrument_baselines(ds, sub)
        except ValueError as exc:  # e.g. one class only in a small instrument's training part
            entry["baselines_error"] = str(exc)
        out[name] = entry
    return out


def _instrument_baselines(ds: Any, sub: list[Any]) -> dict[str, Any]:
    from lobstream.models.baselines import baseline_reports

    return baseline_reports(
        ds.raw,
        ds.levels,
        ds.window,
        (sub[0].ends, _column(sub[0].labels, 0)),
        {
            "validation": (sub[1].ends, _column(sub[1].labels, 0)),
            "test": (sub[2].ends, _column(sub[2].labels, 0)),
        },
        mid=ds.meta["mid"],
        alpha=ds.alphas[0],
        trend_lookback=_trend_lookback(ds, 0),
    )


def _primary(report: dict[str, Any]) -> dict[str, Any]:
    return report["heads"][0] if "heads" in report else report


def _loss_weights(given: tuple[float, ...] | None, n_heads: int) -> tuple[float, ...]:
    lw = tuple(given) if given else tuple([1.0 / n_heads] * n_heads)
    if len(lw) != n_heads:
        raise ValueError(f"{len(lw)} loss weights for {n_heads} horizons")
    return lw


def _parent(
    init: str | Path, expect: dict[str, Any], freeze_layers: str, say: Callable[[str], None]
) -> tuple[Any, dict[str, Any]]:
    """The parent model to fine-tune, its ``freeze_layers`` frozen, and what the manifest
    records of it (``trained_on.init``)."""
    from lobstream.models.finetune import freeze, init_from_artifact

    init_model, parent = init_from_artifact(init, expect)
    frozen = set(freeze(init_model, freeze_layers))
    record = {
        "artifact": parent["artifact"],
        "sha256": parent["sha256"],
        "arch": parent["arch"],
        "label": parent["label"],
        "freeze": freeze_layers,
        "frozen_parameters": sum(
            p.numel() for n, p in init_model.named_parameters() if n in frozen
        ),
    }
    say(
        f"fine-tuning {init} (sha256 {record['sha256'][:16]}...), freeze {freeze_layers}: "
        f"{record['frozen_parameters']:,} parameters frozen"
    )
    return init_model, record


def _baselines(
    ds: Any,
    levels: int,
    window: int,
    parts: tuple[Any, Any, Any],
    n_heads: int,
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    """The baselines' reports, one per head, on the same windows as the model."""
    from lobstream.models.baselines import baseline_reports

    tr, va, te = parts
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
        for h in range(n_heads)
    ]
    say(f"trend baseline: {[b['trend']['rule'] for b in bases]}")
    return bases


def _fresh_model(
    arch: str,
    window: int,
    levels: int,
    model_config: dict[str, Any] | None,
    n_heads: int,
) -> Any:
    """A new ``arch`` network (``n_heads`` label heads)."""
    from lobstream.models.zoo import build_model

    cfg = dict(model_config or {})
    if n_heads > 1:
        cfg["n_classes"] = 3 * n_heads  # one (down, flat, up) block per head
    return build_model(arch, T=window, levels=levels, **cfg)


def _summary(
    ds: Any,
    parent: dict[str, Any] | None,
    val: dict[str, Any],
    test: dict[str, Any],
    bases: list[dict[str, Any]],
    lw: tuple[float, ...],
    training: dict[str, Any],
    command: str | None,
) -> dict[str, Any]:
    """The manifest's summary of a run (metrics of the primary head, and per head when
    there are several)."""
    val_h = val.get("heads", [val])
    test_h = test.get("heads", [test])
    summary: dict[str, Any] = {
        "feature": ds.spec.to_dict(),
        "label": ds.label_dict(),
        "trained_on": {**ds.trained_on(), **({"init": parent} if parent else {})},
        "metrics": {"validation": val_h[0], "test": test_h[0]},
        "baselines": bases[0],
        "training": training,
        "reproduce": command,
    }
    if len(lw) > 1:
        summary["heads"] = [
            {
                "label": ds.label_dict(h),
                "loss_weight": lw[h],
                "metrics": {"validation": val_h[h], "test": test_h[h]},
                "baselines": bases[h],
                "class_balance": ds.class_balance(h),
            }
            for h in range(len(lw))
        ]
        summary["selection"] = {
            "rule": "validation macro-F1 of each head weighted by its loss weight",
            "validation": val["f1_macro"],
            "test": test["f1_macro"],
        }
    return summary
