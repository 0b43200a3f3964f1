"""File readers: every supported source into canonical event batches (EVENT_DTYPE arrays).

Each reader module exposes

- ``FORMAT``: its name (used by ``--format`` and in benchmark output);
- ``detect(path: Path) -> bool``: whether a path looks like this format (by name, then content);
- ``read(path, registry, *, batch_rows, skip_bad, defects) -> Iterator[np.ndarray]``: bounded
  batches of EVENT_DTYPE, registering instruments it meets (tick size from the registry, or
  found in the source and logged). Raises :class:`lobstream.replay.errors.DataError` naming the
  file and row of the first bad record, unless ``skip_bad`` (then counts into ``defects``).

Batches belong to the caller: a reader never writes into a batch it has yielded (the replayer
stamps ``ts_recv`` in place and zmq sends the buffer without a copy). Trades (``ACTION_TRADE``)
carry the aggressor's side: ``SIDE_BID`` for a buyer-initiated trade.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from lobstream.kernels.registry import Registry
from lobstream.replay.errors import DataError, Defects

# Tried in this order by auto-detection.
READER_MODULES = (
    "lobstream.replay.readers.parquet",
    "lobstream.replay.readers.lobster",
    "lobstream.replay.readers.databento",
    "lobstream.replay.readers.tardis",
    "lobstream.replay.readers.binance",
)

DEFAULT_BATCH_ROWS = 262_144


def _modules():
    for name in READER_MODULES:
        try:
            yield importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def formats() -> list[str]:
    """Names of the formats this build can read."""
    return [m.FORMAT for m in _modules()]


def reader_for(path: str | Path, fmt: str = "auto"):
    """The reader module for ``path`` (by ``fmt`` name, or detected)."""
    path = Path(path)
    for mod in _modules():
        if (fmt == "auto" and mod.detect(path)) or mod.FORMAT == fmt:
            return mod
    known = ", ".join(formats())
    if fmt == "auto":
        raise DataError(
            path,
            f"not recognised as any supported format ({known}) by its name or first bytes: "
            "pass --format if it is one of them (an empty or damaged file is not recognised)",
        )
    raise ValueError(f"{path}: no reader for format {fmt!r}; known formats: {known}")


def read_events(
    paths: Iterable[str | Path],
    registry: Registry,
    *,
    fmt: str = "auto",
    batch_rows: int = DEFAULT_BATCH_ROWS,
    skip_bad: bool = False,
    defects: Defects | None = None,
) -> Iterator[np.ndarray]:
    """Event batches from every file in ``paths``, one file after the other."""
    defects = Defects() if defects is None else defects
    for p in paths:
        mod = reader_for(p, fmt)
        yield from mod.read(
            Path(p), registry, batch_rows=batch_rows, skip_bad=skip_bad, defects=defects
        )
