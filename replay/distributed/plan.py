"""Planning a run on Ray: each file's instruments, the one-process registry and the units.

See :mod:`lobstream.replay.distributed` for what a unit is and why it makes the merge exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lobstream.kernels.registry import Registry


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
        from lobstream.replay.readers.lobster import reader as lobster

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


def scan_all(ray, paths, registry, fmt, skip_bad) -> list:
    """:func:`file_instruments` of every file: LOBSTER and Parquet part files here (their
    name or first row says it), the others as Ray tasks."""
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
