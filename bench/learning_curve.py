"""Learning curves: validation and test macro-F1 against the number of training rows
(:mod:`lobstream.replay.training.learning_curve`), one point a training run.

``python -m bench.learning_curve FILES... --arch binctabl --shares 0.125,0.25,0.5,1 --json
curve.json --png curve.png [--set epochs=4 ...]``
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from lobstream.replay.training.learning_curve import learning_curve, with_baselines


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
