"""``lobstream train --sweep SPEC [--ray [ADDRESS]]``: a grid of training runs, best artifact out.

SPEC names values per parameter, ``;`` or spaces between parameters, commas between values::

    --sweep "horizon=10,50 alpha=auto,0.0002 features=zscore,ticks_from_mid arch=binctabl,cnn"

Every combination is a trial: :func:`lobstream.replay.training.pipeline.run_training` with the
other options of the command (epochs, split, max-events, ...), on the same chronological split
(train, validation, test by time, as every ``lobstream train``). The table of trials is printed
(validation and test macro-F1, test accuracy, the best baseline's test macro-F1 on the same
windows); the trial with the best VALIDATION macro-F1 is the one written to ``--out`` (the test
split only reports, it does not choose), and ``--report-json`` gets every trial's summary.

Without ``--ray`` the trials run one after the other in this process; with it, one Ray task per
trial (``--threads`` CPUs each), retried if its worker dies, the artifact coming back through
the object store (no shared file system needed for the outputs; the input files must be
readable on every node).

Why plain Ray tasks and not Ray Tune: a sweep here is a fixed grid of independent trials, every
one of which we keep for the table and choose among only when all are done. Tune's value is
its schedulers that stop trials early (ASHA, PBT), search algorithms and checkpoint/resume of
long trials; none applies to a grid of minutes-long trials, while Tune needs ``ray[tune]``
(pandas, pyarrow, ...) and writes its own result folders. Plain tasks keep one dependency,
``ray``, and the results exactly what one process gives (same seeds, same code path).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# parameter -> (run_training keyword, parser of one value)
SWEEPABLE: dict[str, tuple[str, Callable[[str], Any]]] = {
    "horizon": ("horizon", float),
    "alpha": ("alpha", lambda v: None if v == "auto" else float(v)),
    "label": ("label_kind", str),
    "features": ("features", str),
    "arch": ("arch", str),
    "window": ("window", int),
    "lr": ("lr", float),
    "seed": ("seed", int),
}
_TRAIN_CONFIG_KEYS = ("lr", "seed")  # swept values that belong to the TrainConfig


def parse_sweep(spec: str) -> dict[str, list[Any]]:
    """``"horizon=10,50;arch=cnn,binctabl"`` -> ``{"horizon": [10.0, 50.0], "arch": [...]}``."""
    grid: dict[str, list[Any]] = {}
    for part in spec.replace(";", " ").split():
        if "=" not in part:
            raise ValueError(f"--sweep: {part!r} is not NAME=V1,V2,...")
        name, values = part.split("=", 1)
        name = name.strip().replace("-", "_")
        if name not in SWEEPABLE:
            raise ValueError(f"--sweep: cannot sweep {name!r}; sweepable: {', '.join(SWEEPABLE)}")
        if name in grid:
            raise ValueError(f"--sweep: {name} given twice")
        try:
            vals = [SWEEPABLE[name][1](v.strip()) for v in values.split(",") if v.strip()]
        except ValueError as exc:
            raise ValueError(f"--sweep: {name}={values}: {exc}") from None
        if not vals:
            raise ValueError(f"--sweep: {name} has no values")
        grid[name] = vals
    if not grid:
        raise ValueError("--sweep: no parameters given")
    return grid


def trials(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination, the first parameter varying slowest."""
    names = list(grid)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*grid.values())]


def run_trial(files: Sequence[str], params: dict[str, Any], base: dict[str, Any]) -> dict:
    """One trial: ``run_training`` with ``base`` overridden by ``params``, exported to a temp
    file. Returns a JSON-ready row (``summary``: run_training's) plus the ``artifact`` bytes."""
    from lobstream.replay.training.pipeline import run_training

    t0 = time.perf_counter()
    kw = dict(base)
    tc = kw.pop("train_config")
    over = {k: v for k, v in params.items() if k in _TRAIN_CONFIG_KEYS}
    if over:
        tc = dataclasses.replace(tc, **over)
    for k, v in params.items():
        if k not in _TRAIN_CONFIG_KEYS:
            kw[SWEEPABLE[k][0]] = v
    with tempfile.TemporaryDirectory(prefix="lobstream-trial-") as d:
        out = Path(d) / "model.pt"
        summary = run_training(list(files), train_config=tc, out=out, **kw)
        artifact = out.read_bytes()
    m = summary["metrics"]
    base_test = {
        name: b["test"]["f1_macro"] for name, b in summary["baselines"].items() if "test" in b
    }
    return {
        "params": params,
        "val_f1_macro": m["validation"]["f1_macro"],
        "test_f1_macro": m["test"]["f1_macro"],
        "test_accuracy": m["test"]["accuracy"],
        "best_baseline": max(base_test, key=base_test.get) if base_test else None,
        "best_baseline_test_f1_macro": max(base_test.values()) if base_test else None,
        "alpha": summary["label"]["alpha"],
        "seconds": time.perf_counter() - t0,
        "pid": os.getpid(),
        "summary": summary,
        "artifact": artifact,
    }


def run_sweep(
    files: Sequence[str],
    grid: dict[str, list[Any]],
    base: dict[str, Any],
    *,
    use_ray: bool = False,
    cpus_per_trial: int = 1,
    max_retries: int = 1,
    on_trial: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Every trial of ``grid`` (see :func:`run_trial`), in grid order; on the Ray this process
    is connected to when ``use_ray`` (:class:`lobstream.replay.distributed.session.RaySession`)."""
    todo = trials(grid)
    if not use_ray:
        out = []
        for p in todo:
            out.append(run_trial(files, p, base))
            if on_trial is not None:
                on_trial(out[-1])
        return out
    import ray

    task = ray.remote(num_cpus=cpus_per_trial, max_retries=max_retries)(run_trial)
    refs = [task.remote(list(files), p, base) for p in todo]
    index = {ref: k for k, ref in enumerate(refs)}
    out: list[dict | None] = [None] * len(refs)
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            out[index[ref]] = ray.get(ref)
            if on_trial is not None:
                on_trial(out[index[ref]])
    return out  # type: ignore[return-value]


def best_trial(results: Sequence[dict]) -> int:
    """Index of the best validation macro-F1 (the first on a tie)."""
    return max(range(len(results)), key=lambda k: (results[k]["val_f1_macro"], -k))


def sweep_base(
    grid: dict[str, list[Any]],
    *,
    horizon: float | None,
    horizons: str | None = None,
    loss_weights: str | None = None,
    **run_kw: Any,
) -> dict[str, Any]:
    """run_training's keywords (but files, out) that every trial of ``grid`` starts from:
    ``run_kw`` plus the label horizon(s). ``horizons`` (comma-separated, with
    ``loss_weights``) makes every trial a multi-horizon model, and cannot go with a swept
    horizon; without ``horizon``, the grid's first or the default horizon. Raises
    ``ValueError`` otherwise."""
    from lobstream.replay.training.pipeline import resolve_heads

    if horizons:  # one multi-horizon model per trial
        if "horizon" in grid:
            raise ValueError(
                "--sweep horizon=... trains one horizon per trial: leave --horizons out"
            )
        hs, lw = resolve_heads(None, horizons, loss_weights)
        return {
            **run_kw,
            "horizons": hs if len(hs) > 1 else None,
            "loss_weights": lw,
            "horizon": hs[0],
        }
    if horizon is None:
        from lobstream.replay.training.pipeline import DEFAULT_HORIZON

        horizon = grid["horizon"][0] if "horizon" in grid else DEFAULT_HORIZON
    return {**run_kw, "horizon": horizon}


def sweep_to(
    files: Sequence[str],
    grid: dict[str, list[Any]],
    base: dict[str, Any],
    out: str | Path,
    *,
    ray_address: str | None = None,
    cpus_per_trial: int = 1,
    on_trial: Callable[[dict], None] | None = None,
) -> tuple[list[dict], int]:
    """Run every trial (:func:`run_sweep`; on the Ray of ``ray_address`` when given, see
    :class:`~lobstream.replay.distributed.session.RaySession`) and write the best trial's
    artifact to ``out``. Returns (trials, index of the best)."""
    if ray_address is None:
        results = run_sweep(files, grid, base, on_trial=on_trial)
    else:
        from lobstream.replay.distributed.session import RaySession

        with RaySession(ray_address):
            results = run_sweep(
                files, grid, base, use_ray=True, cpus_per_trial=cpus_per_trial, on_trial=on_trial
            )
    best = best_trial(results)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(results[best]["artifact"])
    return results, best


def write_sweep_report(
    path: str | Path, grid: dict[str, list[Any]], results: Sequence[dict], best: int
) -> None:
    """The sweep as JSON: the grid, the best trial's index, every trial (no artifact bytes)."""
    from lobstream.replay.training.pipeline import write_json

    rows = [{k: v for k, v in r.items() if k != "artifact"} for r in results]
    write_json(path, {"grid": grid, "best": best, "trials": rows})
