"""Learning curves: validation and test macro-F1 against the number of training rows.

Each point is one :func:`~lobstream.replay.training.pipeline.run_training` run on the same
split, labels and validation/test windows, trained on only the *latest* ``share`` of every
stream's training rows (the rows nearest the validation part: adding a share adds older
history, as more days would). The baselines are refitted on the same windows, so each point
compares model and baselines on equal data.

``python -m bench.learning_curve`` runs it (a long run: a benchmark, not a test).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def latest_share(share: float) -> Callable[[Any, Any], Any]:
    """A ``train_filter`` for ``run_training``: the training windows whose last row lies in the
    latest ``share`` (0 < share <= 1) of their stream's training rows."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")

    def keep(ds: Any, tr: Any) -> Any:
        mask = np.zeros(len(tr), bool)
        for s in ds.streams:
            a, b = s.parts["train"]
            first = b - int(np.ceil(share * (b - a)))
            mask |= (tr.ends >= first) & (tr.ends < b)
        return tr.subset(np.flatnonzero(mask))

    return keep


def curve_point(name: str, share: float, summary: dict[str, Any]) -> dict[str, Any]:
    """One point of the curve from a run's summary: the model and its baselines."""
    b = summary["baselines"]
    return {
        "name": name,
        "share": share,
        "training_rows": summary["training"]["training_rows"],
        "training_windows": summary["training"]["training_windows"],
        "val_f1_macro": summary["metrics"]["validation"]["f1_macro"],
        "test_f1_macro": summary["metrics"]["test"]["f1_macro"],
        "baselines": {
            k: {"val_f1_macro": v["validation"]["f1_macro"], "test_f1_macro": v["test"]["f1_macro"]}
            for k, v in b.items()
            if isinstance(v, dict) and "validation" in v
        },
        "best_epoch": summary["training"]["best_epoch"],
        "seconds": summary["training"]["seconds"],
    }


def learning_curve(
    files: Sequence[str],
    shares: Sequence[float],
    *,
    name: str | None = None,
    on_point: Callable[[dict[str, Any]], None] | None = None,
    **run_kw: Any,
) -> list[dict[str, Any]]:
    """One :func:`curve_point` per share (model and baselines); ``run_kw`` go to
    ``run_training`` (``arch``, ``horizon``, ``train_config``, ...)."""
    from lobstream.replay.training.pipeline import run_training

    points = []
    for share in shares:
        summary = run_training(list(files), train_filter=latest_share(share), **run_kw)
        p = curve_point(name or str(run_kw.get("arch")), share, summary)
        points.append(p)
        if on_point is not None:
            on_point(p)
    return points


def with_baselines(points: list[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """``points`` plus the baselines ``names`` as curves of their own (one point per run)."""
    out = list(points)
    for p in points:
        for k in names:
            if k in p["baselines"]:
                out.append({**p, "name": k, **p["baselines"][k]})
    return out
