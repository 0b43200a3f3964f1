"""The backtest on Ray: one task per unit (:func:`backtest_unit`), merged exactly
(:func:`merge_units`) into the one-process report (:func:`backtest_on_ray`)."""

from __future__ import annotations

import copy
import os
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lobstream.kernels.registry import Registry
from lobstream.replay.backtest.trading import DEFAULT_SWEEP, TradingConfig
from lobstream.replay.distributed.plan import expand, plan, scan_all, split_units


@dataclass
class UnitResult:
    """One unit's backtest: its finished evaluator and what the merge needs."""

    files: list[int]  # indices of the unit's files in the command's list
    rows: list[int]  # feature rows per file
    events: list[int]  # events per file
    n_windows: int
    report: dict[str, int]  # kernel condition counts
    scorer: str
    evaluator: Any  # finished, from evaluator_for
    seconds: float
    peak_rss_kib: int  # ru_maxrss of the process that ran it, at its end
    pid: int
    # the instruments this task scored (None: all of its files'); its rows are then a subset
    # of the unit's: runs of them, as (first own row, its row among all the unit's rows)
    instruments: list[int] | None = None
    own_rows: int = 0
    segments: tuple[list[int], list[int]] = ([0], [0])


def _model_file(model: str | Path | bytes) -> Path:
    """A path for the artifact: itself, or its bytes (from the object store) in a temp file."""
    if not isinstance(model, bytes | bytearray | memoryview):
        return Path(model)
    import hashlib

    data = bytes(model)
    path = Path(tempfile.gettempdir()) / f"lobstream-{hashlib.sha256(data).hexdigest()[:16]}.pt"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


# per worker process: (model file, device, batch, threads) -> (manifest, module, ModelRunner).
# A worker runs task after task; loading and warming the runner (every micro-batch size) once
# per process instead of once per task is what a one-process run does for all its files.
_RUNNERS: dict[tuple, tuple] = {}


def _scorer(path: Path, device: str, scorer: str, batch: int, threads, n_inst: int):
    """(manifest, a fresh scorer) of the artifact: a full-window scorer over this process's
    cached runner (the scorer's carry is new, the runner stateless between calls), or
    :func:`~lobstream.models.scoring.make_scorer`'s (incremental runners hold per-slot state:
    never shared)."""
    from lobstream.models.artifact import load_model
    from lobstream.models.manifest import spec_from_manifest
    from lobstream.models.runner import window_runner
    from lobstream.models.scoring import WindowScorer, choose_scorer, make_scorer

    key = (str(path), os.path.getmtime(path), device, int(batch), threads)
    if key not in _RUNNERS:
        module, manifest = load_model(path, device=device)
        _RUNNERS.clear()  # one artifact at a time per worker
        _RUNNERS[key] = (manifest, module, None)
    manifest, module, runner = _RUNNERS[key]
    if choose_scorer(manifest, scorer, device) != "full-window":
        return manifest, make_scorer(
            module, manifest, scorer=scorer, device=device, batch=batch, threads=threads,
            n_instruments=n_inst,
        )  # fmt: skip
    if runner is None:
        runner = window_runner(module, manifest, device=device, max_batch=batch, threads=threads)
        _RUNNERS[key] = (manifest, module, runner)
    T, F = int(manifest["T"]), spec_from_manifest(manifest).n_features
    return manifest, WindowScorer(runner, T, F, batch)


class _OnlyScorer:
    """A scorer that scores the rows of some instruments only (NaN for the others): their
    windows and carries are exactly those the one-process scorer gives them."""

    def __init__(self, inner, own: np.ndarray) -> None:
        self.inner, self.own, self.name = inner, own, inner.name

    @property
    def n_windows(self) -> int:
        return self.inner.n_windows

    def score(self, rows: np.ndarray, meta: np.ndarray) -> np.ndarray:
        idx = np.flatnonzero(self.own[meta["instrument"]])
        if len(idx) == len(meta):
            return self.inner.score(rows, meta)
        if not len(idx):
            return np.full((len(meta), 3), np.nan, np.float32)  # no own row: never added
        p = self.inner.score(rows[idx], meta[idx])
        out = np.full((len(meta), *p.shape[1:]), np.nan, p.dtype)
        out[idx] = p
        return out


def backtest_unit(
    paths: Sequence[str | Path],
    model: str | Path | bytes,
    registry: Registry,
    config: TradingConfig,
    thresholds: Sequence[float] = DEFAULT_SWEEP,
    *,
    files: Sequence[int] | None = None,
    fmt: str = "auto",
    device: str = "cpu",
    threads: int | None = 1,
    batch: int = 256,
    batch_rows: int | None = None,
    skip_bad: bool = False,
    scorer: str = "auto",
    hook: Callable[[list[int], int, int], None] | None = None,
    instruments: Sequence[int] | None = None,
    count_all: bool = True,
) -> UnitResult:
    """Backtest one unit's files (in order, as one stream) into a finished evaluator.

    ``instruments``: score only these ids (the book still runs over every event of the files,
    so their rows are the one-process rows); the rows are then numbered among all of the
    unit's rows (``segments``). ``count_all``: report the events and kernel conditions of the
    whole unit (exactly one task of a split unit does).

    ``registry`` should already hold every instrument of the run (:func:`plan`), so ids are the
    run's. ``hook(files, file_position, rows_so_far)`` is called after each chunk (tests use it
    to kill the worker mid-task)."""
    import torch

    from lobstream.replay.backtest.evaluator import evaluator_for
    from lobstream.replay.backtest.run import run_backtest
    from lobstream.replay.readers import DEFAULT_BATCH_ROWS, read_events

    t0 = time.perf_counter()
    if threads is not None:
        torch.set_num_threads(int(threads))
    registry = Registry(list(registry))
    files = list(range(len(paths))) if files is None else list(files)
    n_inst = max(1, len(registry))
    manifest, sc = _scorer(_model_file(model), device, scorer, batch, threads, n_inst)
    own = None
    if instruments is not None:
        own = np.zeros(n_inst, bool)
        own[list(instruments)] = True
        sc = _OnlyScorer(sc, own)
    ev = evaluator_for(manifest, config, thresholds, n_instruments=n_inst)
    rows = [0] * len(paths)
    events = [0] * len(paths)
    current = [0]
    n_own = [0]
    seg_local: list[int] = []
    seg_unit: list[int] = []

    def batches():
        for k, p in enumerate(paths):
            current[0] = k
            for b in read_events(
                [p],
                registry,
                fmt=fmt,
                batch_rows=batch_rows or DEFAULT_BATCH_ROWS,
                skip_bad=skip_bad,
            ):
                events[k] += len(b)
                yield b

    def on_rows(meta: np.ndarray, probs: np.ndarray) -> None:
        # a chunk's rows all come from the batch just read, so from file current[0]
        first = sum(rows)  # the chunk's first row among all the unit's rows
        rows[current[0]] += len(meta)
        if own is None:
            idx = None
            runs = np.zeros(1 if len(meta) else 0, np.int64)
        else:
            idx = np.flatnonzero(own[meta["instrument"]])
            runs = np.flatnonzero(np.diff(idx, prepend=-2) != 1)  # where a run of own rows starts
        for r in runs.tolist():
            seg_local.append(n_own[0] + r)
            seg_unit.append(first + (r if idx is None else int(idx[r])))
        if idx is None:
            ev.add(meta, probs)
            n_own[0] += len(meta)
        elif len(idx):
            ev.add(meta[idx], probs[idx])
            n_own[0] += len(idx)
        if hook is not None:
            hook(files, current[0], sum(rows))

    result = run_backtest(
        batches(),
        sc,
        manifest,
        n_instruments=n_inst,
        batch=batch,
        on_rows=on_rows,
    )
    ev.finish()
    if sum(events) != result.n_events or sum(rows) != result.n_rows:
        raise RuntimeError(
            f"unit {files}: per-file counts {events} events, {rows} rows do not add up to the "
            f"run's {result.n_events}, {result.n_rows}"
        )
    return UnitResult(
        files,
        rows,
        events if count_all else [0] * len(paths),
        result.n_windows,
        dict(result.report) if count_all else {},
        result.scorer,
        ev,
        time.perf_counter() - t0,
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        os.getpid(),
        None if instruments is None else sorted(int(i) for i in instruments),
        n_own[0],
        (seg_local, seg_unit),
    )


def merge_units(units: Sequence[UnitResult], n_files: int, seconds: float):
    """(BacktestResult, evaluator) of the whole stream from every unit's result.

    Rows are renumbered into the one stream's numbering (files in command order) and the
    evaluators merged in unit order (the merge is order-independent; a fixed order keeps the
    arithmetic of the float sums of the calibration bins reproducible)."""
    from lobstream.replay.backtest.run import BacktestResult

    rows = np.zeros(n_files, np.int64)
    for u in units:
        rows[u.files] = u.rows
    starts = np.concatenate(([0], np.cumsum(rows)[:-1]))
    merged = None
    report: dict[str, int] = {}
    for u in sorted(units, key=lambda u: (u.files[0], u.instruments or [])):
        # a private, writable copy: Ray hands out results as read-only zero-copy arrays
        ev = copy.deepcopy(u.evaluator)
        local, unit_row = (np.asarray(x, np.int64) for x in u.segments)
        if len(local):
            # a row among the unit's rows -> its file (of the unit) -> the one stream's row
            file_start = np.concatenate(([0], np.cumsum(u.rows)[:-1]))
            k = np.searchsorted(file_start, unit_row, side="right") - 1
            ev.remap_rows(local, unit_row - file_start[k] + starts[np.asarray(u.files)[k]])
        merged = ev if merged is None else merged.merge(ev)
        for k, v in u.report.items():
            report[k] = report.get(k, 0) + int(v)
    if merged is None:
        raise ValueError("no units to merge")
    scorers = {u.scorer for u in units}
    result = BacktestResult(
        sum(sum(u.events) for u in units),
        sum(u.n_windows for u in units),
        seconds,
        {k: report[k] for k in sorted(report)},
        sum(u.own_rows for u in units),
        scorers.pop() if len(scorers) == 1 else ",".join(sorted(scorers)),
    )
    return result, merged


@dataclass
class DistributedBacktest:
    """What :func:`backtest_on_ray` returns."""

    result: Any  # BacktestResult: counts and time, no per-row arrays
    manifest: dict
    registry: Registry
    evaluator: Any  # merged, finished
    units: list[UnitResult]
    seconds: float


def backtest_on_ray(
    paths: Sequence[str | Path],
    model_path: str | Path,
    *,
    config_for: Callable[[dict], TradingConfig],
    thresholds: Sequence[float] = DEFAULT_SWEEP,
    registry: Registry | None = None,
    fmt: str = "auto",
    device: str = "cpu",
    threads: int | None = 1,
    batch: int = 256,
    batch_rows: int | None = None,
    skip_bad: bool = False,
    scorer: str = "auto",
    max_retries: int = 3,
    hook: Callable[[list[int], int, int], None] | None = None,
    on_unit: Callable[[int, int], None] | None = None,
    split_instruments: bool = True,
) -> DistributedBacktest:
    """The backtest of ``paths`` as one-process ``lobstream backtest`` runs it, on the Ray
    this process is connected to (see :class:`RaySession`): one task per unit (module
    docstring), retried up to ``max_retries`` times when its worker dies.

    ``config_for(manifest)`` gives the trading config (its horizon follows the artifact);
    ``on_unit(done, total)`` reports progress."""
    import ray

    from lobstream.models.artifact import load_model

    t0 = time.perf_counter()
    paths = expand(paths, fmt)
    base = Registry() if registry is None else registry
    scans = scan_all(ray, paths, base, fmt, skip_bad)
    reg, units = plan(scans, base)
    _, manifest = load_model(model_path)
    config = config_for(manifest)
    model_ref = ray.put(Path(model_path).read_bytes())
    reg_ref = ray.put(reg)
    task = ray.remote(num_cpus=1, max_retries=max_retries)(backtest_unit)
    refs = [
        task.remote(
            [paths[k] for k in u],
            model_ref,
            reg_ref,
            config,
            tuple(thresholds),
            files=u,
            fmt=fmt,
            device=device,
            threads=threads,
            batch=batch,
            batch_rows=batch_rows,
            skip_bad=skip_bad,
            scorer=scorer,
            hook=hook,
            instruments=only,
            count_all=first,
        )
        for u, only, first in split_units(units, scans, reg, split_instruments)
    ]
    done: list[UnitResult] = []
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        done.extend(ray.get(ready))
        if on_unit is not None:
            on_unit(len(done), len(refs))
    seconds = time.perf_counter() - t0
    result, ev = merge_units(done, len(paths), seconds)
    return DistributedBacktest(result, manifest, reg, ev, done, seconds)
