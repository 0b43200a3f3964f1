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
import functools
import itertools
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

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


# ---------------------------------------------------------------- the train command's options


def sweep_options(command_fn):
    """Add ``--sweep SPEC`` and ``--ray [ADDRESS]`` to the ``train`` command's function: with
    ``--sweep`` the command runs :func:`sweep_command` instead of its own body."""
    from lobstream.replay.distributed.session import ray_option

    @functools.wraps(command_fn)
    def wrapper(*args, sweep=None, ray_address=None, **kwargs):
        if sweep is None:
            if ray_address is not None:
                raise click.UsageError("--ray on train runs a --sweep: give --sweep SPEC")
            return command_fn(*args, **kwargs)
        return sweep_command(sweep, ray_address, kwargs)

    wrapper = click.option(
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
    )(wrapper)
    return ray_option(wrapper)


def _base_from_cli(p: dict[str, Any], grid: dict[str, list[Any]]) -> dict[str, Any]:
    """run_training's keywords (but files, out) from the train command's parameters
    (``--horizons``/``--loss-weights``: every trial a multi-horizon model)."""
    from lobstream.models.train import TrainConfig
    from lobstream.replay.cli.train import _alpha, _split

    keys = ("epochs", "batch_size", "lr", "weight_decay", "patience", "seed",
            "max_train_windows", "max_eval_windows", "device", "threads", "chunk_rows",
            "chunks_per_step")  # fmt: skip
    tc = TrainConfig(
        **{k: p[k] for k in keys if p.get(k) is not None}, sequence=not p.get("per_window")
    )
    horizon = p.get("horizon")
    heads: dict[str, Any] = {}
    if p.get("horizons"):  # one multi-horizon model per trial
        if "horizon" in grid:
            raise click.UsageError(
                "--sweep horizon=... trains one horizon per trial: leave --horizons out"
            )
        from lobstream.replay.cli.train import _heads_options

        hs, lw = _heads_options(None, p["horizons"], p.get("loss_weights"))
        heads = {"horizons": hs if len(hs) > 1 else None, "loss_weights": lw}
        horizon = hs[0]
    elif horizon is None:
        if "horizon" not in grid:
            raise click.UsageError("give --horizon K, or sweep it: --sweep 'horizon=10,50 ...'")
        horizon = grid["horizon"][0]
    return {
        **heads,
        "arch": p["arch"],
        "horizon": horizon,
        "horizon_unit": p["horizon_unit"],
        "alpha": _alpha(p["alpha"]),
        "label_kind": p["label"],
        "window": p["window"],
        "levels": p["levels"],
        "features": p["features"],
        "split": _split(p["split"]),
        "max_events": p["max_events"],
        "eval_stride": p["eval_stride"],
        "train_config": tc,
    }


def sweep_command(spec: str, ray_address: str | None, p: dict[str, Any]) -> None:
    """The ``train --sweep`` command body: run, print the table, write the best artifact."""
    from rich.console import Console
    from rich.table import Table

    from lobstream.replay.distributed.session import RaySession, RayUnavailable, check_ray_address
    from lobstream.replay.errors import DataError

    check_ray_address(ray_address)
    if p.get("init"):
        raise click.UsageError("--sweep trains fresh models: it does not take --init")
    try:
        grid = parse_sweep(spec)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--sweep") from None
    base = _base_from_cli(p, grid)
    err = Console(stderr=True)
    n = len(trials(grid))
    err.print(f"[dim]sweep: {n} trial(s) of {', '.join(grid)}{' on Ray' if ray_address else ''}")

    def show(r: dict) -> None:
        err.print(
            f"[dim]trial {r['params']}: val macro-F1 {r['val_f1_macro']:.4f}, test "
            f"{r['test_f1_macro']:.4f} ({r['seconds']:.0f} s)[/dim]"
        )

    threads = int(p.get("threads") or 1)
    try:
        if ray_address is None:
            results = run_sweep(p["files"], grid, base, on_trial=show)
        else:
            try:
                with RaySession(ray_address):
                    results = run_sweep(
                        p["files"], grid, base, use_ray=True, cpus_per_trial=threads, on_trial=show
                    )
            except RayUnavailable as exc:
                raise click.UsageError(str(exc)) from None
    except (DataError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    best = best_trial(results)
    out = Path(p["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(results[best]["artifact"])
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
    if p.get("report_json"):
        rows = [{k: v for k, v in r.items() if k != "artifact"} for r in results]
        Path(p["report_json"]).write_text(
            json.dumps({"grid": grid, "best": best, "trials": rows}, indent=1, default=_default)
        )
    click.echo(
        f"{out}  sha256 {results[best]['summary']['sha256']}  best {results[best]['params']}"
    )


def _default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))
