"""Backtests and conversions of many files on Ray: one task per unit, results merged exactly.

``lobstream backtest --ray [ADDRESS]`` and ``lobstream convert --ray [ADDRESS]`` run here;
``lobstream train --sweep ... --ray`` is :mod:`lobstream.replay.training.sweep`. Without an address a
local Ray starts on this machine (no set-up); with one (``auto``, ``HOST:6379`` or
``ray://HOST:10001``) the driver joins that cluster. Ray is optional (``pip install
'lobstream[ray]'``): nothing here imports it until a command asks for it.

What a unit is, and why the merge is exact
------------------------------------------
The one-process backtest reads its files one after the other as ONE stream (``read_events``):
each instrument's book, window carry, labels (their lookahead) and open positions run on from
one file into the next file of the same instrument, while different instruments share nothing
but the row numbering (trades name rows of the whole stream) and the registry (ids in order of
first appearance). So a unit is the set of files that share instruments (a connected component
of "file -> symbols it carries"; usually one file, or every day of one instrument), its files
in the command's order, and

1. the driver first learns each file's symbols (LOBSTER: from the file name; other formats: a
   reading pass, as Ray tasks) and builds the registry the one-process run would build, in the
   same order (its ids), which every task gets: ids agree everywhere, no remapping by symbol;
2. each unit's task (or each instrument's, see below) replays its files into an evaluator
   (:func:`lobstream.replay.backtest.evaluator.evaluator_for`) and finishes it (end of its instruments'
   streams: the last labels, open positions closed at the instrument's last row), counting
   rows and events per file;
3. the driver renumbers each unit's rows into the whole stream's numbering (files in the
   command's order, each file's rows contiguous there) and merges the evaluators
   (``merge``: counts add, trades join and are ordered by exit time then row).

A canonical Parquet dataset folder is expanded into its part files (what its reader reads, in
its order; one instrument each), so its instruments are units of their own. A unit of several
instruments (a file that holds several, interleaved: a multi-symbol Databento or Tardis file)
becomes one task per instrument (:func:`split_units`): each task reads all of the unit's files
and runs the book over every event (cheap next to the model), scores only its instrument's
rows, and records where they sit among all the unit's rows (``segments``), which is what the
renumbering needs; one task of the unit counts its events and kernel conditions.

Confusion matrices, signal counts, trades and every number of the summary are then equal to
the one-process run's (tests/test_ray.py); only ``seconds`` differ, and the calibration bins'
float sums (plots) are added in another order. ``--max-rows`` cuts the one stream at a row and
is refused with ``--ray``. Kernel condition counts add up.

Files must be readable at the same path on every node (a shared file system); the model
artifact travels through Ray's object store.
"""

from __future__ import annotations

import copy
import logging
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

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'lobstream[ray]'"
# the local Ray started by --ray with no address: small object store (results are small)
LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached; the message says which."""


def import_ray():
    """The ``ray`` module, or :class:`RayUnavailable` saying how to install it."""
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable(
            f"--ray needs Ray, which is not installed ({exc}): {INSTALL_HINT}"
        ) from None
    return ray


def ray_option(f):
    """``--ray [ADDRESS]`` on a click command (parameter ``ray_address``: None without it,
    ``"local"`` for a bare ``--ray``)."""
    import click

    return click.option(
        "--ray",
        "ray_address",
        is_flag=False,
        flag_value="local",
        default=None,
        metavar="[ADDRESS]",
        help=(
            "Run on Ray: a bare --ray starts a local Ray on this machine; --ray=ADDRESS joins "
            "a cluster (auto, HOST:6379, ray://HOST:10001). Put a bare --ray after the files "
            f"(or write --ray=ADDRESS). Needs {INSTALL_HINT}."
        ),
    )(f)


def check_ray_address(address: str | None) -> None:
    """Refuse an address that is an existing path: a bare ``--ray`` took the next FILE."""
    if address and address != "local" and Path(address).exists():
        import click

        raise click.UsageError(
            f"--ray took {address!r} (a file) as its address: put a bare --ray after the "
            "files, or write --ray=ADDRESS"
        )


class RaySession:
    """``with RaySession(address) as ray:``: Ray connected for the block.

    Starts (``address`` None or ``"local"``: a new local Ray, ``num_cpus`` of them, all by
    default) or joins (an address) Ray unless it is already initialised in this process (a
    test's fixture, a notebook), and shuts down only what it started."""

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, **init):
        self.address = address
        self.num_cpus = num_cpus
        self.init = init
        self._started = False

    def __enter__(self):
        ray = import_ray()
        if not ray.is_initialized():
            if self.address in (None, "local"):
                ray.init(
                    address="local",
                    num_cpus=self.num_cpus,
                    include_dashboard=False,
                    object_store_memory=self.init.pop(
                        "object_store_memory", LOCAL_OBJECT_STORE_BYTES
                    ),
                    log_to_driver=self.init.pop("log_to_driver", False),
                    **self.init,
                )
            else:
                try:
                    ray.init(address=self.address, **self.init)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise RayUnavailable(
                        f"--ray={self.address}: cannot join that Ray cluster ({exc}); start one "
                        "with `ray start --head`, or give a bare --ray for a local Ray"
                    ) from None
            self._started = True
        return ray

    def __exit__(self, *exc) -> None:
        if self._started:
            import ray

            ray.shutdown()


# ---------------------------------------------------------------- planning: registry and units


def file_instruments(
    path: str | Path, registry: Registry, fmt: str = "auto", skip_bad: bool = False
) -> tuple[list[tuple[str, str, dict]], list[str]]:
    """What a file brings to a run that starts from ``registry`` (not modified).

    Returns
    -------
    (added, symbols): ``added`` the instruments its reader registers, in registration order,
    as (symbol, tick size, price scales); ``symbols`` those its events carry (sorted).
    LOBSTER names its one symbol in the file name; other formats are read through.
    """
    from lobstream.replay.errors import Defects
    from lobstream.replay.readers import DEFAULT_BATCH_ROWS, reader_for

    reg = Registry(list(registry))
    mod = reader_for(path, fmt)
    if mod.FORMAT == "parquet" and Path(path).is_file():
        import polars as pl

        # one instrument per part file: its first row names it (what read() registers)
        head = pl.read_parquet(path, columns=["symbol", "tick_size"], n_rows=1)
        symbols = []
        if len(head) and head["symbol"][0] is not None and head["tick_size"][0] is not None:
            reg.add(head["symbol"][0], head["tick_size"][0])
            symbols = [head["symbol"][0]]
    elif mod.FORMAT == "lobster":
        from lobstream.replay.readers import lobster

        symbol = lobster.parse_name(lobster.pair_paths(path)[0]).symbol
        lobster._instrument(reg, symbol)  # what read() registers before its first event
        symbols = [symbol]
    else:
        ids: set[int] = set()
        for b in mod.read(
            Path(path), reg, batch_rows=DEFAULT_BATCH_ROWS, skip_bad=skip_bad, defects=Defects()
        ):
            ids.update(np.unique(b["instrument"]).tolist())
        symbols = sorted(reg.by_id(i).symbol for i in ids)
    added = [(i.symbol, str(i.tick_size), dict(i.price_scale)) for i in list(reg)[len(registry) :]]
    return added, symbols


def plan(
    scans: Sequence[tuple[list[tuple[str, str, dict]], list[str]]], registry: Registry
) -> tuple[Registry, list[list[int]]]:
    """The one-process run's registry and the units, from :func:`file_instruments` of each
    file (command order).

    Returns
    -------
    (registry, units): a new registry (``registry``'s instruments, then each file's additions
    in file order, as the readers would add them); units as lists of file indices, increasing,
    files that share a symbol in one unit, units ordered by their first file.
    """
    reg = Registry(list(registry))
    for added, _ in scans:
        for symbol, tick, scale in added:
            reg.add(symbol, tick, scale)
    parent = list(range(len(scans)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for k, (_, symbols) in enumerate(scans):
        for s in symbols:
            if s in owner:
                a, b = find(owner[s]), find(k)
                parent[max(a, b)] = min(a, b)
            else:
                owner[s] = k
    units: dict[int, list[int]] = {}
    for k in range(len(scans)):
        units.setdefault(find(k), []).append(k)
    return reg, sorted(units.values())


def expand(paths: Sequence[str | Path], fmt: str = "auto") -> list[str]:
    """The files the one-process run reads, in its order: a canonical Parquet dataset folder
    becomes its part files (one instrument each), so its instruments can be separate units."""
    from lobstream.replay.readers import reader_for

    out: list[str] = []
    for p in paths:
        if Path(p).is_dir() and reader_for(p, fmt).FORMAT == "parquet":
            from lobstream.replay.readers.parquet import part_files

            out.extend(str(f) for f in part_files(p))
        else:
            out.append(str(p))
    return out


def split_units(
    units: Sequence[list[int]], scans, registry: Registry, split: bool = True
) -> list[tuple[list[int], list[int] | None, bool]]:
    """Tasks of the units: (files, instrument ids to score or None for all, whether it counts
    the unit's events and conditions). A unit of several instruments (a file holding several)
    becomes one task per instrument when ``split``: each reads the unit's files, scores its
    own instrument's rows and numbers them among all the unit's rows."""
    out: list[tuple[list[int], list[int] | None, bool]] = []
    for u in units:
        ids = sorted({registry.by_symbol(s).id for k in u for s in scans[k][1]})
        if not split or len(ids) <= 1:
            out.append((u, None, True))
        else:
            out.extend((u, [i], j == 0) for j, i in enumerate(ids))
    return out


def _scan_all(ray, paths, registry, fmt, skip_bad):
    out: list[Any] = [None] * len(paths)
    remote = ray.remote(num_cpus=1)(file_instruments)
    pending = {}
    from lobstream.replay.readers import reader_for

    for k, p in enumerate(paths):
        fast = reader_for(p, fmt).FORMAT in ("lobster", "parquet") and Path(p).is_file()
        if fast:  # the name or the first row says it: no task
            out[k] = file_instruments(p, registry, fmt, skip_bad)
        else:
            pending[k] = remote.remote(str(p), registry, fmt, skip_bad)
    for k, ref in pending.items():
        out[k] = ray.get(ref)
    return out


# ---------------------------------------------------------------- backtest


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
    :func:`make_scorer`'s (incremental runners hold per-slot state: never shared)."""
    from lobstream.models.artifact import load_model
    from lobstream.models.manifest import spec_from_manifest
    from lobstream.replay.backtest.run import (
        WindowScorer,
        choose_scorer,
        make_scorer,
    )

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
        from lobstream.models.runner import ModelRunner

        runner = ModelRunner(module, manifest, device=device, max_batch=batch, threads=threads)
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
    scans = _scan_all(ray, paths, base, fmt, skip_bad)
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


# ---------------------------------------------------------------- convert


def convert_unit(
    paths: Sequence[str | Path],
    out: str | Path,
    registry: Registry,
    *,
    fmt: str = "auto",
    skip_bad: bool = False,
    rows_per_file: int | None = None,
) -> tuple[dict, dict, dict, dict]:
    """:func:`lobstream.replay.convert.convert` of one unit's files; (inputs, written,
    defect counts, where each defect kind was first seen) as plain dicts."""
    from lobstream.replay.convert import convert
    from lobstream.replay.readers.parquet import ROWS_PER_FILE

    s = convert(
        paths,
        out,
        Registry(list(registry)),
        fmt=fmt,
        skip_bad=skip_bad,
        rows_per_file=rows_per_file or ROWS_PER_FILE,
    )
    return dict(s.inputs), dict(s.written), dict(s.defects), dict(s.defects.first)


def convert_on_ray(
    paths: Sequence[str | Path],
    out: str | Path,
    registry: Registry | None = None,
    *,
    fmt: str = "auto",
    skip_bad: bool = False,
    rows_per_file: int | None = None,
    max_retries: int = 3,
):
    """:func:`lobstream.replay.convert.convert` with one Ray task per unit.

    Units hold every file of their instruments, so each partition folder
    (``instrument=SYMBOL/date=...``) is written by one task, from the same events in the same
    order as one process writes it: the same part files. Instrument ids are the one-process
    run's (:func:`plan`). A task that dies is rerun (``max_retries``); parts it wrote before
    dying are overwritten only if they have the same names, so retries assume an empty
    ``out``. Returns a :class:`~lobstream.replay.convert.ConvertSummary`."""
    import ray

    from lobstream.replay.convert import ConvertSummary

    t0 = time.perf_counter()
    given = [Path(p) for p in paths]
    paths = [Path(p) for p in expand(given, fmt)]
    base = Registry() if registry is None else registry
    reg, units = plan(_scan_all(ray, [str(p) for p in paths], base, fmt, skip_bad), base)
    task = ray.remote(num_cpus=1, max_retries=max_retries)(convert_unit)
    reg_ref = ray.put(reg)
    parts = ray.get(
        [
            task.remote(
                [paths[k] for k in u],
                str(out),
                reg_ref,
                fmt=fmt,
                skip_bad=skip_bad,
                rows_per_file=rows_per_file,
            )
            for u in units
        ]
    )
    summary = ConvertSummary()
    inputs: dict = {}
    for inp, written, counts, first in parts:
        inputs.update(inp)
        summary.written.update(written)
        for kind, n in counts.items():
            summary.defects.add(kind, first.get(kind, ""), n)
    if paths == given:
        summary.inputs = {p: inputs[p] for p in paths}
    else:  # per input as given: a dataset folder sums its part files
        for p in paths:
            owner = next(g for g in given if p == g or g in p.parents)
            f, n = inputs[p]
            summary.inputs[owner] = (f, summary.inputs.get(owner, (f, 0))[1] + n)
    summary.written = dict(sorted(summary.written.items()))
    summary.seconds = time.perf_counter() - t0
    if registry is not None:
        for inst in list(reg)[len(registry) :]:
            registry.add(inst.symbol, inst.tick_size, inst.price_scale)
    return summary
