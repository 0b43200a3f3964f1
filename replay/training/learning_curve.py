"""Learning curves: validation and test macro-F1 against the number of training rows.

Each point is one :func:`~lobstream.replay.training.pipeline.run_training` run on the same
split, labels and validation/test windows, trained on only the *latest* ``share`` of every
stream's training rows (the rows nearest the validation part: adding a share adds older
history, as more days would). The baselines are refitted on the same windows, so each point
compares model and baselines on equal data.

``python -m lobstream.replay.training.learning_curve FILES... --arch binctabl --shares
0.125,0.25,0.5,1 --json curve.json --png curve.png [--set epochs=4 ...]`` (a long run: a
benchmark, not a test).
"""

from __future__ import annotations

import argparse
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


def _value(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def main(argv: Sequence[str] | None = None) -> None:
    from lobstream.models.train import TrainConfig
    from lobstream.replay.training.curves import plot_learning_curve
    from lobstream.replay.training.pipeline import write_json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--arch", default="binctabl")
    ap.add_argument("--horizon", type=float, default=50.0)
    ap.add_argument("--features", default="zscore")
    ap.add_argument("--shares", default="0.125,0.25,0.5,1")
    ap.add_argument("--eval-stride", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="TrainConfig field, e.g. epochs=4")  # fmt: skip
    ap.add_argument("--json", required=True)
    ap.add_argument("--png", default=None)
    a = ap.parse_args(argv)
    tc = TrainConfig(**{k: _value(v) for k, v in (s.split("=", 1) for s in a.set)})
    points = learning_curve(
        a.files,
        [float(s) for s in a.shares.split(",")],
        arch=a.arch,
        horizon=a.horizon,
        features=a.features,
        eval_stride=a.eval_stride,
        train_config=tc,
        on_point=lambda p: print(
            f"{p['name']} share {p['share']}: {p['training_rows']} rows, val "
            f"{p['val_f1_macro']:.4f}, test {p['test_f1_macro']:.4f}, logistic val "
            f"{p['baselines'].get('logistic', {}).get('val_f1_macro', float('nan')):.4f}",
            flush=True,
        ),
    )
    write_json(a.json, {"arch": a.arch, "features": a.features, "points": points})
    if a.png:
        title = f"learning curve: {a.arch}, {a.features}, k = {a.horizon:g}"
        plot_learning_curve(a.png, with_baselines(points, ["logistic", "trend"]), title)


if __name__ == "__main__":
    main()
