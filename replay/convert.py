"""Any supported file format -> canonical Parquet (:mod:`lobstream.replay.readers.parquet`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lobstream.kernels.registry import Registry
from lobstream.replay.errors import Defects
from lobstream.replay.readers import DEFAULT_BATCH_ROWS, reader_for
from lobstream.replay.readers.parquet import ROWS_PER_FILE, ParquetWriter

logger = logging.getLogger(__name__)


@dataclass
class ConvertSummary:
    """Events read per input file, rows per Parquet file written, defects skipped."""

    inputs: dict[Path, tuple[str, int]] = field(default_factory=dict)  # path -> (format, events)
    written: dict[Path, int] = field(default_factory=dict)
    defects: Defects = field(default_factory=Defects)
    seconds: float = 0.0

    @property
    def events(self) -> int:
        return sum(n for _, n in self.inputs.values())

    def as_dict(self) -> dict:
        """JSON-ready: events, inputs (path -> format and events), written (part file ->
        events), defects (kind -> count)."""
        return {
            "events": self.events,
            "inputs": {str(p): {"format": f, "events": n} for p, (f, n) in self.inputs.items()},
            "written": {str(p): n for p, n in self.written.items()},
            "defects": dict(self.defects),
        }


def convert(
    paths: Iterable[str | Path],
    out: str | Path,
    registry: Registry,
    *,
    fmt: str = "auto",
    skip_bad: bool = False,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    rows_per_file: int = ROWS_PER_FILE,
    progress: Callable[[Path, int], None] | None = None,
) -> ConvertSummary:
    """Read every file in ``paths`` (format ``fmt`` or detected) into Parquet under ``out``.

    ``progress(path, events_so_far)`` is called after each batch. Raises
    :class:`lobstream.replay.errors.DataError` on a bad record unless ``skip_bad``; parts
    written before the error stay on disk.
    """
    summary = ConvertSummary()
    t0 = time.perf_counter()
    with ParquetWriter(out, registry, rows_per_file) as writer:
        for p in map(Path, paths):
            mod = reader_for(p, fmt)
            n = 0
            for batch in mod.read(
                p, registry, batch_rows=batch_rows, skip_bad=skip_bad, defects=summary.defects
            ):
                writer.write(batch)
                n += len(batch)
                if progress is not None:
                    progress(p, n)
            summary.inputs[p] = (mod.FORMAT, n)
            logger.info("%s (%s): %d events", p, mod.FORMAT, n)
    summary.written = dict(writer.written)
    summary.seconds = time.perf_counter() - t0
    return summary
